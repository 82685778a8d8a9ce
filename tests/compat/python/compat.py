"""psycopg 3 and the SQLAlchemy 2 ORM, unchanged, against shardcar.

Run by tests/e2e/compat.rs with SHARDCAR_DSN (a shardcar in front of two
shards, `<prefix>_*` tables sharded by customer_id, two-phase commit on) and
COMPAT_PREFIX. Each step prints what it did; any failure raises and exits
non-zero. The Rust side then checks where the rows landed, on the shards.
"""

import sys

import psycopg
from psycopg import ClientCursor, errors
from sqlalchemy import BigInteger, Integer, String, create_engine, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from checks import DSN, PREFIX, expect, step


def psycopg_suite(mode):
    """The same steps with client-side binding over the simple protocol
    (ClientCursor) and with server-side prepared statements (every statement
    prepared, prepare_threshold=0)."""
    t = f"{PREFIX}_{mode}"
    if mode == "simple":
        conn = psycopg.connect(DSN, autocommit=True, cursor_factory=ClientCursor)
    else:
        conn = psycopg.connect(DSN, autocommit=True, prepare_threshold=0)
    with conn:
        conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE {t} (customer_id bigint PRIMARY KEY, note text, amount int)")
        step(f"{mode}: DDL on every shard")

        for i in range(1, 41):
            conn.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (i, f"note {i}", i * 10))
        step(f"{mode}: 40 inserts routed by key")

        for i in (1, 7, 23, 40):
            row = conn.execute(f"SELECT note, amount FROM {t} WHERE customer_id = %s", (i,)).fetchone()
            expect(row == (f"note {i}", i * 10), f"read back customer {i}: {row}")
        step(f"{mode}: reads by key")

        # A transaction on one shard, and one across both (two-phase commit).
        with conn.transaction():
            conn.execute(f"UPDATE {t} SET amount = amount + 1 WHERE customer_id = %s", (5,))
            conn.execute(f"UPDATE {t} SET note = %s WHERE customer_id = %s", ("updated", 5))
        with conn.transaction():
            for i in range(1, 11):
                conn.execute(f"UPDATE {t} SET amount = amount + 1000 WHERE customer_id = %s", (i,))
        row = conn.execute(f"SELECT amount, note FROM {t} WHERE customer_id = %s", (5,)).fetchone()
        expect(row == (1051, "updated"), f"transactions committed: {row}")
        try:
            with conn.transaction():
                conn.execute(f"UPDATE {t} SET amount = 0 WHERE customer_id = %s", (2,))
                conn.execute(f"UPDATE {t} SET amount = 0 WHERE customer_id = %s", (3,))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        row = conn.execute(f"SELECT amount FROM {t} WHERE customer_id = %s", (2,)).fetchone()
        expect(row == (1020,), f"rolled back: {row}")
        step(f"{mode}: transactions commit and roll back, on one shard and across both")

        # The same prepared statement many times, with different keys.
        for _ in range(3):
            for i in (11, 12, 13):
                row = conn.execute(f"SELECT count(*) FROM {t} WHERE customer_id = %s", (i,)).fetchone()
                expect(row == (1,), f"prepared read {i}: {row}")
        # Across shards, with parameters: merged.
        total = conn.execute(f"SELECT count(*), sum(amount) FROM {t} WHERE amount > %s", (0,)).fetchone()
        expect(total == (40, 8200 + 10000 + 1), f"aggregate across shards: {total}")
        ordered = conn.execute(f"SELECT customer_id FROM {t} WHERE amount >= %s ORDER BY customer_id DESC LIMIT 3", (0,)).fetchall()
        expect(ordered == [(40,), (39,), (38,)], f"ORDER BY across shards: {ordered}")
        step(f"{mode}: parameterised and prepared queries, on one shard and merged across both")

        # Server-side cursors (DECLARE ... CURSOR, FETCH FORWARD n): by key on
        # its shard; over every shard kept by shardcar, merged in order as it
        # is fetched, with writes on the same shards between fetches.
        with conn.transaction():
            with conn.cursor(name="by_key") as cur:
                cur.execute(f"SELECT note FROM {t} WHERE customer_id = %s", (7,))
                expect(cur.fetchmany(5) == [("note 7",)], "a server-side cursor by key")
        with conn.transaction():
            with conn.cursor(name="everywhere") as cur:
                cur.execute(f"SELECT customer_id FROM {t} WHERE amount >= %s ORDER BY customer_id", (0,))
                ids = [r[0] for r in cur.fetchmany(5)]
                for key in (1, 2):
                    conn.execute(f"UPDATE {t} SET note = note WHERE customer_id = %s", (key,))
                ids += [r[0] for r in cur.fetchmany(5)]
                ids += [r[0] for r in cur.fetchall()]
                expect(ids == list(range(1, 41)), f"a server-side cursor over every shard: {ids}")
        step(f"{mode}: a server-side cursor by key, and one over every shard")

        # A bulk insert of arrays bound as parameters (psycopg sends them as
        # text): split by key, RETURNING in input order; written inline
        # (client-side binding: ARRAY[...]) it is refused rather than sent
        # whole to every shard.
        ids = [1005, 1001, 1004, 1002, 1003]
        bulk = f"INSERT INTO {t} (customer_id, note, amount) SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[]) RETURNING customer_id, note"
        args = (ids, [f"bulk {i}" for i in ids], [0] * len(ids))
        if mode == "simple":
            try:
                conn.execute(bulk, args)
                raise AssertionError("arrays written inline were split")
            except errors.FeatureNotSupported as e:
                expect("unnest" in str(e), f"says why, and what is split: {e}")
        else:
            got = conn.execute(bulk, args).fetchall()
            expect(got == [(i, f"bulk {i}") for i in ids], f"RETURNING in input order: {got}")
            for i in ids:
                conn.execute(f"DELETE FROM {t} WHERE customer_id = %s", (i,))
        step(f"{mode}: a bulk insert from unnest(arrays), split by key")

        try:
            conn.execute(f"INSERT INTO {t} VALUES (%s, 'dup', 0)", (1,))
            raise AssertionError("a duplicate key was accepted")
        except errors.UniqueViolation as e:
            expect(e.sqlstate == "23505", e.sqlstate)
        try:
            conn.execute(f"SELECT array_agg(note) FROM {t}")
            raise AssertionError("array_agg across shards was not refused")
        except errors.FeatureNotSupported as e:
            expect("shard" in (e.diag.message_hint or ""), f"a hint saying how: {e.diag.message_hint}")
        expect(conn.execute("SELECT 1").fetchone() == (1,), "the session carries on")
        step(f"{mode}: errors surface with their SQLSTATE and the session carries on")

        with conn.cursor().copy(f"COPY {t} (customer_id, note, amount) FROM STDIN") as copy:
            for i in range(100, 160):
                copy.write_row((i, f"copied {i}", i))
        n = conn.execute(f"SELECT count(*) FROM {t} WHERE customer_id >= %s", (100,)).fetchone()
        expect(n == (60,), f"COPY rows: {n}")
        step(f"{mode}: COPY FROM STDIN split by key")

        # Binary, as psycopg writes typed rows, and CSV with a header.
        with conn.cursor().copy(f"COPY {t} (customer_id, note, amount) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "int4"])
            for i in range(200, 260):
                copy.write_row((i, f"binary {i}", i))
        with conn.cursor().copy(f"COPY {t} (customer_id, note, amount) FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write("customer_id,note,amount\n")
            for i in range(300, 320):
                copy.write(f'{i},"csv, {i}\nline two",{i}\n')
        n = conn.execute(f"SELECT count(*) FROM {t} WHERE customer_id >= %s", (200,)).fetchone()
        expect(n == (80,), f"binary and CSV COPY rows: {n}")
        note = conn.execute(f"SELECT note FROM {t} WHERE customer_id = %s", (311,)).fetchone()
        expect(note == ("csv, 311\nline two",), f"a CSV row where its key routes: {note}")
        with conn.transaction():  # one key per DELETE: a transaction across shards
            for i in [*range(200, 260), *range(300, 320)]:
                conn.execute(f"DELETE FROM {t} WHERE customer_id = %s", (i,))
        step(f"{mode}: binary and CSV COPY split by key")


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = f"{PREFIX}_orm"
    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    visits: Mapped[int] = mapped_column(Integer, default=0)


def sqlalchemy_suite():
    engine = create_engine(DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        Base.metadata.drop_all(conn)
        Base.metadata.create_all(conn)
        conn.commit()
    step("orm: create_all in a transaction, on every shard")

    with Session(engine) as s:
        s.add_all([Customer(customer_id=i, name=f"customer {i}") for i in range(1, 31)])
        s.commit()
    step("orm: 30 objects added in one commit (rows for both shards)")

    with Session(engine) as s:
        c7 = s.get(Customer, 7)
        expect(c7 is not None and c7.name == "customer 7", f"get by key: {c7}")
        c7.visits += 1
        s.get(Customer, 8).visits += 2
        s.commit()
        count = s.scalar(select(func.count()).select_from(Customer).where(Customer.visits > 0))
        expect(count == 2, f"count of visited: {count}")
        names = s.scalars(select(Customer.name).where(Customer.customer_id <= 3).order_by(Customer.customer_id)).all()
        expect(names == ["customer 1", "customer 2", "customer 3"], f"ordered select: {names}")
    step("orm: get, update, count and an ordered query across shards")

    with Session(engine) as s:
        s.add(Customer(customer_id=1, name="duplicate"))
        try:
            s.commit()
            raise AssertionError("a duplicate primary key was accepted")
        except Exception as e:  # sqlalchemy.exc.IntegrityError
            expect(getattr(getattr(e, "orig", None), "sqlstate", None) == "23505", f"IntegrityError: {e!r}")
            s.rollback()
        expect(s.get(Customer, 1).name == "customer 1", "the session carries on")
    step("orm: an integrity error surfaces and the session recovers")

    # Nested transactions (savepoints) in a transaction across shards: the
    # failed nested part is rolled back to its savepoint on every shard, the
    # rest commits.
    with Session(engine) as s:
        s.get(Customer, 2).visits += 10  # one shard (s0)
        s.get(Customer, 8).visits += 10  # and the other (s1)
        s.flush()
        try:
            with s.begin_nested():
                s.get(Customer, 3).visits += 100
                s.add(Customer(customer_id=7, name="duplicate"))
                s.flush()
            raise AssertionError("a duplicate primary key was accepted")
        except Exception as e:  # sqlalchemy.exc.IntegrityError
            expect(getattr(getattr(e, "orig", None), "sqlstate", None) == "23505", f"IntegrityError: {e!r}")
        with s.begin_nested():
            s.get(Customer, 4).visits += 1
        s.commit()
    with Session(engine) as s:
        visits = {i: s.get(Customer, i).visits for i in (2, 3, 4, 8)}
        expect(visits == {2: 10, 3: 0, 4: 1, 8: 12}, f"after the nested transactions: {visits}")
    step("orm: begin_nested() across shards, an error rolled back to its savepoint")

    # A bulk insert with RETURNING in parameter order (insertmanyvalues).
    with Session(engine) as s:
        ids = [105, 101, 104, 102, 103, 108, 107, 106]
        rows = [{"customer_id": i, "name": f"bulk {i}"} for i in ids]
        stmt = insert(Customer).returning(Customer.customer_id, Customer.name, sort_by_parameter_order=True)
        got = [tuple(r) for r in s.execute(stmt, rows)]
        expect(got == [(i, f"bulk {i}") for i in ids], f"RETURNING in parameter order: {got}")
        s.commit()
        expect(s.get(Customer, 108).name == "bulk 108", "found by key")
    step("orm: a bulk insert with RETURNING in parameter order, split by key")


def main():
    which = sys.argv[1:] or ["simple", "prepared", "orm"]
    for mode in which:
        if mode == "orm":
            sqlalchemy_suite()
        else:
            psycopg_suite(mode)
    print("all passed", flush=True)


if __name__ == "__main__":
    main()
