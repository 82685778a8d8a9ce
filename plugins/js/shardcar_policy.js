// The JavaScript SDK of shardcar routing plugins: helpers for the
// `shardcar:policy` world that componentize-js builds a component from.
//
// `partition` places a key as PostgreSQL's hash partitioning does (and as
// the built-in `hash` plugin does): integers hash as `hashint8extended`,
// text as `hashtextextended`, NULL at remainder 0 — a port of the Rust
// SDK's `pghash` (Bob Jenkins' lookup3, `src/common/hashfn.c`). 32-bit
// steps use `>>> 0`; 64-bit ones BigInt.

const M64 = (1n << 64n) - 1n;
// HASH_PARTITION_SEED in src/include/catalog/partition.h.
export const PARTITION_SEED = 0x7a5b22367996dcfdn;

/** The policy's config (the JSON `init` receives); throws what the host shows. */
export function config(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw `config is not JSON: ${e}`;
  }
}

/** The names of the topology's shards, in index order. */
export function shardNames(topology) {
  return topology.shards.map((s) => s.name);
}

/** A shard's index in the topology; throws naming it when absent. */
export function index(names, name) {
  const at = names.indexOf(name);
  if (at < 0) throw `shard ${name} is not in the topology (${names.join(", ")})`;
  return at;
}

/** These shards (indexes into the topology). */
export function decision(indexes, role = "any") {
  return { target: { tag: "shards", val: Array.from(indexes) }, role };
}

export function everywhere(role = "any") {
  return { target: { tag: "all" }, role };
}

const rol = (x, k) => ((x << k) | (x >>> (32 - k))) >>> 0;

function mix(a, b, c) {
  a = ((a - c) ^ rol(c, 4)) >>> 0;
  c = (c + b) >>> 0;
  b = ((b - a) ^ rol(a, 6)) >>> 0;
  a = (a + c) >>> 0;
  c = ((c - b) ^ rol(b, 8)) >>> 0;
  b = (b + a) >>> 0;
  a = ((a - c) ^ rol(c, 16)) >>> 0;
  c = (c + b) >>> 0;
  b = ((b - a) ^ rol(a, 19)) >>> 0;
  a = (a + c) >>> 0;
  c = ((c - b) ^ rol(b, 4)) >>> 0;
  b = (b + a) >>> 0;
  return [a, b, c];
}

function finish(a, b, c) {
  c = ((c ^ b) - rol(b, 14)) >>> 0;
  a = ((a ^ c) - rol(c, 11)) >>> 0;
  b = ((b ^ a) - rol(a, 25)) >>> 0;
  c = ((c ^ b) - rol(b, 16)) >>> 0;
  a = ((a ^ c) - rol(c, 4)) >>> 0;
  b = ((b ^ a) - rol(a, 14)) >>> 0;
  c = ((c ^ b) - rol(b, 24)) >>> 0;
  return (BigInt(b) << 32n) | BigInt(c);
}

function seeded(length, seed) {
  const start = (0x9e3779b9 + length + 3923095) >>> 0;
  if (seed === 0n) return [start, start, start];
  return mix((start + Number(seed >> 32n)) >>> 0, (start + Number(seed & 0xffffffffn)) >>> 0, start);
}

/** `hash_bytes_uint32_extended`. */
export function uint32Extended(k, seed) {
  const [a, b, c] = seeded(4, seed);
  return finish((a + k) >>> 0, b, c);
}

/** `hashint8extended`: the high half folded into the low one. */
export function int8Extended(v, seed) {
  const hi = Number((v >> 32n) & 0xffffffffn);
  const lo = (Number(v & 0xffffffffn) ^ (v >= 0n ? hi : ~hi)) >>> 0;
  return uint32Extended(lo, seed);
}

/** `hash_bytes_extended`. */
export function bytesExtended(k, seed) {
  let [a, b, c] = seeded(k.length, seed);
  const word = (i) => (k[i] | (k[i + 1] << 8) | (k[i + 2] << 16) | (k[i + 3] << 24)) >>> 0;
  let at = 0;
  while (k.length - at >= 12) {
    a = (a + word(at)) >>> 0;
    b = (b + word(at + 4)) >>> 0;
    c = (c + word(at + 8)) >>> 0;
    [a, b, c] = mix(a, b, c);
    at += 12;
  }
  // The last 11 bytes; c's lowest byte is reserved for the length.
  for (let i = 0; at + i < k.length; i++) {
    const byte = k[at + i];
    if (i < 4) a = (a + byte * 2 ** (8 * i)) >>> 0;
    else if (i < 8) b = (b + byte * 2 ** (8 * (i - 4))) >>> 0;
    else c = (c + byte * 2 ** (8 * (i - 7))) >>> 0;
  }
  return finish(a, b, c);
}

/** `hash_combine64`. */
export function combine64(a, b) {
  return a ^ ((b + 0x49a0f4dd15e5a8e3n + ((a << 54n) & M64) + (a >> 7n)) & M64);
}

/** The seeded 64-bit hash Postgres computes for a value of its type. */
export function extended(value, seed) {
  if (value.tag === "int") return int8Extended(BigInt(value.val), seed);
  if (value.tag === "text") return bytesExtended(new TextEncoder().encode(value.val), seed);
  return 0n;
}

/** The index of `value` among `count` partitions (shards), as Postgres
 * places it in a `PARTITION BY HASH` table with `MODULUS count`. */
export function partition(value, count) {
  if (count === 0 || value.tag === "null") return 0;
  return Number(combine64(0n, extended(value, PARTITION_SEED)) % BigInt(count));
}
