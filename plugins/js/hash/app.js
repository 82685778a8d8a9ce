// `hash-js`: the built-in `hash` policy, in JavaScript. A key goes to the
// shard Postgres's hash partitioning would pick: the remainder of a
// `PARTITION BY HASH` table with `MODULUS <number of shards>`.
//
// Config: `{ shards = ["s0", "s1", ...] }`, in remainder order.

import * as sdk from "./shardcar_policy.js";

let shards = [];
let names = [];

export function init(config) {
  shards = sdk.config(config).shards || [];
  if (shards.length === 0) throw "config needs `shards`, a non-empty list of shard names";
}

export function info() {
  return { name: "hash-js", version: "0.1.0", customExtract: false };
}

export function setTopology(topology) {
  names = sdk.shardNames(topology);
}

export function extractKey(facts) {
  return facts.keyValues();
}

export function route(facts, keys) {
  if (keys.length === 0) {
    // No key in the statement: it concerns every shard of this policy.
    return sdk.decision(shards.map((s) => sdk.index(names, s)));
  }
  return sdk.decision(keys.map((k) => sdk.index(names, shards[sdk.partition(k, shards.length)])));
}
