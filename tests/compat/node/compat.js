// node-postgres (`pg`), unchanged, against shardcar.
//
// Run by tests/e2e/compat.rs with SHARDCAR_DSN (a shardcar in front of two
// shards, `<prefix>_node` sharded by customer_id, two-phase commit on) and
// COMPAT_PREFIX. Each step prints what it did; a failure exits non-zero.
// `pg` has no COPY of its own (that is the pg-copy-streams package): the
// suite does not use it.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

const t = `${process.env.COMPAT_PREFIX}_node`;
const step = (what) => console.log(`ok: ${what}`);

async function main() {
  const client = new Client({ connectionString: process.env.SHARDCAR_DSN });
  await client.connect();

  await client.query(`DROP TABLE IF EXISTS ${t}`);
  await client.query(`CREATE TABLE ${t} (customer_id bigint PRIMARY KEY, note text, amount int)`);
  step('DDL on every shard');

  for (let i = 1; i <= 40; i++) {
    await client.query(`INSERT INTO ${t} VALUES ($1, $2, $3)`, [i, `note ${i}`, i * 10]);
  }
  step('40 parameterised inserts routed by key');

  for (const i of [1, 7, 23, 40]) {
    const { rows } = await client.query(`SELECT note, amount FROM ${t} WHERE customer_id = $1`, [i]);
    assert.deepEqual(rows, [{ note: `note ${i}`, amount: i * 10 }]);
  }
  // A named prepared statement, reused with other keys.
  for (let round = 0; round < 3; round++) {
    for (const i of [11, 12, 13]) {
      const { rows } = await client.query({ name: 'by-key', text: `SELECT note FROM ${t} WHERE customer_id = $1`, values: [i] });
      assert.equal(rows[0].note, `note ${i}`);
    }
  }
  step('reads by key, and a named prepared statement');

  await client.query('BEGIN');
  for (let i = 1; i <= 10; i++) {
    await client.query(`UPDATE ${t} SET amount = amount + 1000 WHERE customer_id = $1`, [i]);
  }
  await client.query('COMMIT');
  await client.query('BEGIN');
  await client.query(`UPDATE ${t} SET amount = 0 WHERE customer_id = $1`, [2]);
  await client.query(`UPDATE ${t} SET amount = 0 WHERE customer_id = $1`, [3]);
  await client.query('ROLLBACK');
  const { rows: two } = await client.query(`SELECT amount FROM ${t} WHERE customer_id = $1`, [2]);
  assert.equal(two[0].amount, 1020);
  step('a transaction across shards commits, another rolls back');

  const { rows: total } = await client.query(`SELECT count(*)::int AS n, sum(amount)::int AS s FROM ${t} WHERE amount > $1`, [0]);
  assert.deepEqual(total, [{ n: 40, s: 18200 }]);
  const { rows: top } = await client.query(`SELECT customer_id FROM ${t} ORDER BY customer_id DESC LIMIT 3`);
  assert.deepEqual(top.map((r) => Number(r.customer_id)), [40, 39, 38]);
  step('aggregates and ORDER BY merged across shards');

  await assert.rejects(client.query(`INSERT INTO ${t} VALUES ($1, 'dup', 0)`, [1]), (e) => e.code === '23505');
  await assert.rejects(client.query(`SELECT array_agg(note) FROM ${t}`), (e) => e.code === '0A000' && /shard/.test(e.hint));
  const { rows: one } = await client.query('SELECT 1 AS one');
  assert.equal(one[0].one, 1);
  step('errors surface with their SQLSTATE and the session carries on');

  await client.end();
  console.log('all passed');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
