"""The Python SDK of shardcar routing plugins: helpers for the
`shardcar:policy` world that componentize-py builds a component from.

`partition` places a key as PostgreSQL's hash partitioning does (and as
the built-in `hash` plugin does): integers hash as `hashint8extended`,
text as `hashtextextended`, NULL at remainder 0 — a port of the Rust SDK's
`pghash` (Bob Jenkins' lookup3, `src/common/hashfn.c`).
"""

import json

from componentize_py_types import Err
from wit_world.imports import types

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
# HASH_PARTITION_SEED in src/include/catalog/partition.h.
PARTITION_SEED = 0x7A5B22367996DCFD


def config(text):
    """The policy's config (the JSON `init` receives), or an error the host shows."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise Err(f"config is not JSON: {e}")


def shard_names(topology):
    """The names of the topology's shards, in index order."""
    return [s.name for s in topology.shards]


def index(names, name):
    """A shard's index in the topology, or an error naming it."""
    try:
        return names.index(name)
    except ValueError:
        raise Err(f"shard {name} is not in the topology ({', '.join(names)})")


def decision(indexes, role=types.Role.ANY):
    """These shards (indexes into the topology)."""
    return types.Decision(target=types.Target_Shards(list(indexes)), role=role)


def everywhere(role=types.Role.ANY):
    return types.Decision(target=types.Target_All(), role=role)


def _rol(x, k):
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a, b, c):
    a = ((a - c) & M32) ^ _rol(c, 4)
    c = (c + b) & M32
    b = ((b - a) & M32) ^ _rol(a, 6)
    a = (a + c) & M32
    c = ((c - b) & M32) ^ _rol(b, 8)
    b = (b + a) & M32
    a = ((a - c) & M32) ^ _rol(c, 16)
    c = (c + b) & M32
    b = ((b - a) & M32) ^ _rol(a, 19)
    a = (a + c) & M32
    c = ((c - b) & M32) ^ _rol(b, 4)
    b = (b + a) & M32
    return a, b, c


def _finish(a, b, c):
    c = ((c ^ b) - _rol(b, 14)) & M32
    a = ((a ^ c) - _rol(c, 11)) & M32
    b = ((b ^ a) - _rol(a, 25)) & M32
    c = ((c ^ b) - _rol(b, 16)) & M32
    a = ((a ^ c) - _rol(c, 4)) & M32
    b = ((b ^ a) - _rol(a, 14)) & M32
    c = ((c ^ b) - _rol(b, 24)) & M32
    return (b << 32) | c


def _seeded(length, seed):
    start = (0x9E3779B9 + length + 3923095) & M32
    if seed == 0:
        return start, start, start
    return _mix((start + (seed >> 32)) & M32, (start + (seed & M32)) & M32, start)


def uint32_extended(k, seed):
    """`hash_bytes_uint32_extended`."""
    a, b, c = _seeded(4, seed)
    return _finish((a + k) & M32, b, c)


def int8_extended(v, seed):
    """`hashint8extended`: the high half folded into the low one."""
    hi = (v >> 32) & M32
    lo = (v & M32) ^ (hi if v >= 0 else (~hi & M32))
    return uint32_extended(lo, seed)


def bytes_extended(k, seed):
    """`hash_bytes_extended`."""
    a, b, c = _seeded(len(k), seed)
    rest = k
    while len(rest) >= 12:
        a = (a + int.from_bytes(rest[0:4], "little")) & M32
        b = (b + int.from_bytes(rest[4:8], "little")) & M32
        c = (c + int.from_bytes(rest[8:12], "little")) & M32
        a, b, c = _mix(a, b, c)
        rest = rest[12:]
    # The last 11 bytes; c's lowest byte is reserved for the length.
    for i, byte in enumerate(rest):
        if i < 4:
            a = (a + (byte << (8 * i))) & M32
        elif i < 8:
            b = (b + (byte << (8 * (i - 4)))) & M32
        else:
            c = (c + (byte << (8 * (i - 7)))) & M32
    return _finish(a, b, c)


def combine64(a, b):
    """`hash_combine64`."""
    return a ^ ((b + 0x49A0F4DD15E5A8E3 + ((a << 54) & M64) + (a >> 7)) & M64)


def extended(value, seed):
    """The seeded 64-bit hash Postgres computes for a value of its type."""
    if isinstance(value, types.Value_Int):
        return int8_extended(value.value, seed)
    if isinstance(value, types.Value_Text):
        return bytes_extended(value.value.encode("utf-8"), seed)
    return 0


def partition(value, count):
    """The index of `value` among `count` partitions (shards), as Postgres
    places it in a `PARTITION BY HASH` table with `MODULUS count`."""
    if count == 0 or isinstance(value, types.Value_Null):
        return 0
    return combine64(0, extended(value, PARTITION_SEED)) % count
