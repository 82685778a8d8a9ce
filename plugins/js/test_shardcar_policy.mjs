// The SDK's Postgres-compatible hashing, checked on the host against
// values PostgreSQL 15 computes (the Rust SDK's pghash tests use the same).
//   node --test plugins/js/test_shardcar_policy.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import * as sdk from "./shardcar_policy.js";

const signed = (x) => BigInt.asIntN(64, x);
const bytes = (s) => new TextEncoder().encode(s);

test("hash functions match Postgres", () => {
  const s = sdk.PARTITION_SEED;
  assert.equal(signed(sdk.int8Extended(42n, s)), 7363975540656877951n);
  assert.equal(signed(sdk.int8Extended(-7n, s)), -7298374200968567817n);
  assert.equal(signed(sdk.int8Extended(0n, 0n)), 4154612158245552303n);
  assert.equal(signed(sdk.bytesExtended(bytes("acme"), s)), -3006037837944560592n);
  assert.equal(signed(sdk.bytesExtended(bytes("a longer tenant name here"), s)), -4080222085918227424n);
  assert.equal(signed(sdk.bytesExtended(bytes(""), s)), -5700645584453517373n);
});

test("keys land where Postgres partitions them", () => {
  const ints = [[1, 0], [2, 0], [3, 1], [4, 1], [5, 1], [6, 1], [7, 1], [8, 1], [42, 0]];
  for (const [k, part] of ints) assert.equal(sdk.partition({ tag: "int", val: BigInt(k) }, 2), part, `${k}`);
  const texts = [["acme", 2], ["globex", 2], ["hooli", 2], ["initech", 0], ["umbrella", 1]];
  for (const [k, part] of texts) assert.equal(sdk.partition({ tag: "text", val: k }, 3), part, k);
  assert.equal(sdk.partition({ tag: "null" }, 7), 0);
});
