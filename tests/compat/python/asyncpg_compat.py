"""asyncpg, unchanged, against shardcar.

asyncpg sends every statement as Parse, Describe and Flush, waits for the
description, then Bind, Execute and Sync; its pool resets each connection it
takes back with a multi-statement query. Run by tests/e2e/compat.rs with
SHARDCAR_DSN (two shards, `<prefix>_*` tables sharded by customer_id,
two-phase commit on) and COMPAT_PREFIX; the Rust side then checks where the
rows landed, on the shards.
"""

import asyncio
import io

import asyncpg

from checks import DSN, PREFIX, expect, step


async def main():
    t = f"{PREFIX}_asyncpg"
    conn = await asyncpg.connect(DSN)
    await conn.execute(f"DROP TABLE IF EXISTS {t}")
    await conn.execute(f"CREATE TABLE {t} (customer_id bigint PRIMARY KEY, note text, amount int)")
    step("DDL on every shard")

    insert = f"INSERT INTO {t} VALUES ($1, $2, $3)"
    for i in range(1, 21):
        await conn.execute(insert, i, f"note {i}", i * 10)
    step("20 inserts routed by key (prepared, described before bind)")

    # executemany in a transaction: rows for both shards, one two-phase commit.
    async with conn.transaction():
        await conn.executemany(insert, [(i, f"note {i}", i * 10) for i in range(21, 31)])
    step("executemany across shards in a transaction")

    for i in (1, 7, 23, 30):
        row = await conn.fetchrow(f"SELECT note, amount FROM {t} WHERE customer_id = $1", i)
        expect(tuple(row) == (f"note {i}", i * 10), f"read back customer {i}: {row}")
    step("reads by key")

    # Across shards, with parameters: merged.
    n = await conn.fetchval(f"SELECT count(*) FROM {t} WHERE amount > $1", 0)
    expect(n == 30, f"count across shards: {n}")
    top = await conn.fetch(f"SELECT customer_id FROM {t} WHERE amount >= $1 ORDER BY customer_id DESC LIMIT 3", 0)
    expect([r[0] for r in top] == [30, 29, 28], f"ORDER BY across shards: {top}")
    some = await conn.fetch(f"SELECT customer_id FROM {t} WHERE customer_id = ANY(ARRAY[$1, $2]::bigint[]) ORDER BY 1", 1, 2)
    expect([r[0] for r in some] == [1, 2], f"keys on both shards: {some}")
    step("parameterised queries across shards")

    # Transactions across shards commit and roll back.
    async with conn.transaction():
        await conn.execute(f"UPDATE {t} SET amount = amount + 1000 WHERE customer_id = $1", 1)
        await conn.execute(f"UPDATE {t} SET amount = amount + 1000 WHERE customer_id = $1", 2)
    try:
        async with conn.transaction():
            await conn.execute(f"UPDATE {t} SET amount = 0 WHERE customer_id = $1", 3)
            await conn.execute(f"UPDATE {t} SET amount = 0 WHERE customer_id = $1", 4)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    rows = await conn.fetch(f"SELECT amount FROM {t} WHERE customer_id = ANY($1::bigint[]) ORDER BY customer_id", [1, 2, 3, 4])
    expect([r[0] for r in rows] == [1010, 1020, 30, 40], f"commit and rollback across shards: {rows}")
    step("transactions across shards commit and roll back")

    # A cursor reads a portal a few rows at a time (Execute with a row limit).
    async with conn.transaction():
        cur = await conn.cursor(f"SELECT note FROM {t} WHERE customer_id = $1", 5)
        first = await cur.fetch(1)
        expect([r[0] for r in first] == ["note 5"], f"cursor by key: {first}")
    step("cursor by key")

    # And across shards: the merge goes on from where each fetch stopped.
    async with conn.transaction():
        cur = await conn.cursor(f"SELECT customer_id FROM {t} ORDER BY customer_id")
        first, then = await cur.fetch(4), await cur.fetch(4)
        ids = [r[0] for r in first + then]
        expect(ids == list(range(1, 9)), f"cursor across shards, 4 rows at a time: {ids}")
    step("cursor across shards")

    # COPY into the sharded table: rows split by key.
    data = "".join(f"{i}\tcopied {i}\t{i}\n" for i in range(31, 41)).encode()
    await conn.copy_to_table(t, source=io.BytesIO(data), columns=["customer_id", "note", "amount"])
    n = await conn.fetchval(f"SELECT count(*) FROM {t}")
    expect(n == 40, f"after COPY: {n}")
    step("copy_to_table split by key")

    # Its bulk loader: binary COPY of records, split by key.
    await conn.copy_records_to_table(t, records=[(i, f"record {i}", i) for i in range(1001, 1101)],
                                     columns=["customer_id", "note", "amount"])
    n = await conn.fetchval(f"SELECT count(*) FROM {t} WHERE customer_id > 1000")
    expect(n == 100, f"after copy_records_to_table: {n}")
    note = await conn.fetchval(f"SELECT note FROM {t} WHERE customer_id = $1", 1077)
    expect(note == "record 1077", f"a record where its key routes: {note}")
    async with conn.transaction():  # one key per DELETE: a transaction across shards
        for i in range(1001, 1101):
            await conn.execute(f"DELETE FROM {t} WHERE customer_id = $1", i)
    step("copy_records_to_table (binary COPY) split by key")

    # COPY TO: by key like its query, or every shard's rows concatenated.
    out = io.BytesIO()
    await conn.copy_from_query(f"SELECT customer_id, note FROM {t} WHERE customer_id = $1", 33, output=out)
    expect(out.getvalue() == b"33\tcopied 33\n", f"copy_from_query by key: {out.getvalue()!r}")
    out = io.BytesIO()
    await conn.copy_from_table(t, columns=["customer_id"], output=out)
    ids = sorted(int(line) for line in out.getvalue().split())
    expect(ids == list(range(1, 41)), f"copy_from_table from both shards: {ids}")
    step("copy_from_query by key and copy_from_table across shards")

    # executemany without a transaction: one batch, rows for both shards,
    # one implicit transaction (two-phase).
    await conn.executemany(insert, [(i, f"note {i}", i * 10) for i in range(41, 51)])
    n = await conn.fetchval(f"SELECT count(*) FROM {t}")
    expect(n == 50, f"after executemany in autocommit: {n}")
    step("executemany across shards in autocommit")

    try:
        await conn.execute(insert, 1, "dup", 0)
        raise AssertionError("a duplicate key was accepted")
    except asyncpg.UniqueViolationError as e:
        expect(e.sqlstate == "23505", e.sqlstate)
    expect(await conn.fetchval("SELECT 1") == 1, "the session carries on after an error")
    step("errors surface with their SQLSTATE")

    # A type of the application's own has another OID on each shard; asyncpg
    # looks up the OID a description gives before it can decode the column.
    mood = f"{PREFIX}_mood"
    await conn.execute(f"CREATE TYPE {mood} AS ENUM ('calm', 'busy')")
    await conn.execute(f"ALTER TABLE {t} ADD COLUMN mood {mood} NOT NULL DEFAULT 'calm'")
    catalog_oid = await conn.fetchval("SELECT oid FROM pg_catalog.pg_type WHERE typname = $1", mood)
    read = await conn.prepare(f"SELECT mood FROM {t} WHERE customer_id = $1")
    for i in range(1, 9):
        got = await read.fetchval(i)
        expect(got == "calm", f"enum from the shard of customer {i}: {got!r}")
        described = read.get_attributes()[0].type.oid
        expect(described == catalog_oid, f"customer {i}: described as type {described}, the catalog says {catalog_oid}")
    step("a type of the application's own, read from either shard")
    await conn.close()

    # The default pool resets every connection it takes back.
    pool = await asyncpg.create_pool(DSN, min_size=2, max_size=2)
    for i in range(6):
        async with pool.acquire() as c:
            expect(await c.fetchval(f"SELECT amount FROM {t} WHERE customer_id = $1", 7) == 70, "pooled read")
    await pool.close()
    step("the default pool")
    print("all passed")


asyncio.run(main())
