// pgjdbc, unchanged, against shardcar.
//
// pgjdbc uses the extended protocol for everything, sends Execute with a row
// limit of 1 for statements it expects no rows from (executeUpdate, batches,
// commit, rollback), and switches a PreparedStatement to a named server-side
// statement after prepareThreshold (5) uses. Run by tests/e2e/compat.rs with
// SHARDCAR_JDBC (a shardcar in front of two shards, `<prefix>_*` tables
// sharded by customer_id, two-phase commit on) and COMPAT_PREFIX; the Rust
// side then checks where the rows landed, on the shards.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.Savepoint;
import java.sql.SQLException;
import java.sql.Statement;

import org.postgresql.PGResultSetMetaData;
import org.postgresql.util.PGobject;

public class Compat {
    static void step(String what) {
        System.out.println("ok: " + what);
    }

    static void expect(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    public static void main(String[] args) throws Exception {
        String t = System.getenv("COMPAT_PREFIX") + "_jdbc";
        try (Connection c = DriverManager.getConnection(System.getenv("SHARDCAR_JDBC"))) {
            try (Statement s = c.createStatement()) {
                s.executeUpdate("DROP TABLE IF EXISTS " + t);
                s.executeUpdate("CREATE TABLE " + t + " (customer_id bigint PRIMARY KEY, note text, amount int)");
            }
            step("executeUpdate DDL on every shard");

            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?, ?)")) {
                for (int i = 1; i <= 20; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "note " + i);
                    ins.setInt(3, i * 10);
                    expect(ins.executeUpdate() == 1, "insert " + i);
                }
            }
            step("20 inserts with one PreparedStatement, past prepareThreshold");

            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?, ?)")) {
                for (int i = 21; i <= 30; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "note " + i);
                    ins.setInt(3, i * 10);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                expect(counts.length == 10, "batch counts");
            }
            c.commit();
            step("executeBatch across shards in a transaction, committed");

            c.setAutoCommit(true);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?, ?)")) {
                for (int i = 31; i <= 40; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "note " + i);
                    ins.setInt(3, i * 10);
                    ins.addBatch();
                }
                expect(ins.executeBatch().length == 10, "autocommit batch counts");
            }
            step("executeBatch across shards in autocommit, one implicit transaction");
            c.setAutoCommit(false);

            try (PreparedStatement up = c.prepareStatement("UPDATE " + t + " SET amount = 0 WHERE customer_id = ?")) {
                for (long k : new long[] {3, 4}) {
                    up.setLong(1, k);
                    up.executeUpdate();
                }
            }
            c.rollback();
            c.setAutoCommit(true);
            step("rollback across shards");

            try (PreparedStatement q = c.prepareStatement("SELECT note, amount FROM " + t + " WHERE customer_id = ?")) {
                for (int round = 0; round < 3; round++) {
                    for (long k : new long[] {1, 3, 4, 23}) {
                        q.setLong(1, k);
                        try (ResultSet rs = q.executeQuery()) {
                            expect(rs.next(), "row " + k);
                            expect(rs.getString(1).equals("note " + k) && rs.getInt(2) == k * 10, "read back " + k);
                        }
                    }
                }
            }
            step("reads by key, the rolled-back rows unchanged");

            try (PreparedStatement q = c.prepareStatement(
                    "SELECT customer_id, note FROM " + t + " WHERE amount >= ? ORDER BY customer_id DESC LIMIT 3")) {
                q.setInt(1, 0);
                try (ResultSet rs = q.executeQuery()) {
                    ResultSetMetaData md = rs.getMetaData();
                    expect(md.getColumnCount() == 2, "two columns");
                    expect(md.getColumnLabel(1).equals("customer_id"), md.getColumnLabel(1));
                    expect(md.getColumnTypeName(2).equals("text"), md.getColumnTypeName(2));
                    long[] want = {30, 29, 28};
                    for (long w : want) {
                        expect(rs.next() && rs.getLong(1) == w + 10, "ORDER BY across shards");
                    }
                }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM " + t)) {
                expect(rs.next() && rs.getLong(1) == 40, "count across shards");
            }
            step("queries merged across shards, with their metadata");

            // A fetch size in a transaction: a portal read 7 rows per Execute, across shards.
            c.setAutoCommit(false);
            try (PreparedStatement q = c.prepareStatement("SELECT customer_id FROM " + t + " ORDER BY customer_id")) {
                q.setFetchSize(7);
                try (ResultSet rs = q.executeQuery()) {
                    long last = 0;
                    int n = 0;
                    while (rs.next()) {
                        expect(rs.getLong(1) > last, "in order");
                        last = rs.getLong(1);
                        n++;
                    }
                    expect(n == 40, "every row, 7 at a time: " + n);
                }
            }
            c.commit();
            step("setFetchSize across shards in a transaction");

            // A savepoint in a transaction across shards (1 is on s0, 3 on s1).
            try (PreparedStatement up = c.prepareStatement("UPDATE " + t + " SET note = ? WHERE customer_id = ?")) {
                up.setString(1, "kept");
                up.setLong(2, 1);
                up.executeUpdate();
                Savepoint sp = c.setSavepoint();
                for (long k : new long[] {1, 3}) {
                    up.setString(1, "undone");
                    up.setLong(2, k);
                    up.executeUpdate();
                }
                c.rollback(sp);
                up.setString(1, "kept");
                up.setLong(2, 3);
                up.executeUpdate();
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery("SELECT count(*) FROM " + t + " WHERE note = 'kept'")) {
                expect(rs.next() && rs.getLong(1) == 2, "rolled back to the savepoint on both shards");
            }
            try (PreparedStatement up = c.prepareStatement("UPDATE " + t + " SET note = ? WHERE customer_id = ?")) {
                for (long k : new long[] {1, 3}) {
                    up.setString(1, "note " + k);
                    up.setLong(2, k);
                    up.executeUpdate();
                }
            }
            step("setSavepoint and rollback(savepoint) across shards");

            // Table and type OIDs differ between the shards (the test shifts
            // s1's); pgjdbc looks a description's OIDs up in the catalog it reads.
            String mood = t + "_mood";
            try (Statement s = c.createStatement()) {
                s.executeUpdate("CREATE TYPE " + mood + " AS ENUM ('calm', 'busy')");
                s.executeUpdate("ALTER TABLE " + t + " ADD COLUMN mood " + mood + " NOT NULL DEFAULT 'calm'");
            }
            for (boolean inTransaction : new boolean[] {false, true}) {
                c.setAutoCommit(!inTransaction);
                try (PreparedStatement q = c.prepareStatement("SELECT customer_id, note, mood FROM " + t + " WHERE customer_id = ?")) {
                    for (long k = 1; k <= 8; k++) {
                        q.setLong(1, k);
                        try (ResultSet rs = q.executeQuery()) {
                            PGResultSetMetaData md = (PGResultSetMetaData) rs.getMetaData();
                            expect(rs.getMetaData().getColumnTypeName(3).equals(mood), "key " + k + ": type " + rs.getMetaData().getColumnTypeName(3));
                            expect(md.getBaseTableName(1).equals(t), "key " + k + ": table " + md.getBaseTableName(1));
                            expect(md.getBaseColumnName(2).equals("note"), "key " + k + ": column " + md.getBaseColumnName(2));
                            expect(rs.getMetaData().isNullable(1) == ResultSetMetaData.columnNoNulls, "key " + k + ": NOT NULL");
                            expect(rs.getMetaData().isNullable(2) == ResultSetMetaData.columnNullable, "key " + k + ": nullable");
                        }
                    }
                }
                if (inTransaction) {
                    c.commit();
                }
            }
            c.setAutoCommit(true);
            step("ResultSetMetaData of rows from either shard names the table, in and out of a transaction");

            // pgjdbc declares a PGobject's type by the OID it looked up.
            PGobject busy = new PGobject();
            busy.setType(mood);
            busy.setValue("busy");
            try (PreparedStatement up = c.prepareStatement("UPDATE " + t + " SET mood = ? WHERE customer_id = ?");
                 PreparedStatement q = c.prepareStatement("SELECT mood::text FROM " + t + " WHERE customer_id = ?")) {
                for (long k = 1; k <= 8; k++) {
                    up.setObject(1, busy);
                    up.setLong(2, k);
                    expect(up.executeUpdate() == 1, "set the mood of " + k);
                    q.setLong(1, k);
                    try (ResultSet rs = q.executeQuery()) {
                        expect(rs.next() && rs.getString(1).equals("busy"), "mood of " + k);
                    }
                }
            }
            step("a parameter declared with the application's own type, on either shard");

            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + t + " VALUES (?, 'dup', 0)")) {
                ins.setLong(1, 1);
                ins.executeUpdate();
                throw new AssertionError("a duplicate key was accepted");
            } catch (SQLException e) {
                expect("23505".equals(e.getSQLState()), e.getSQLState());
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1")) {
                expect(rs.next() && rs.getInt(1) == 1, "the session carries on");
            }
            step("errors surface with their SQLSTATE");
        }
        System.out.println("all passed");
    }
}
