"""`hash-py`: the built-in `hash` policy, in Python. A key goes to the
shard Postgres's hash partitioning would pick: the remainder of a
`PARTITION BY HASH` table with `MODULUS <number of shards>`.

Config: `{ shards = ["s0", "s1", ...] }`, in remainder order.
"""

from componentize_py_types import Err
import wit_world
from wit_world.imports import types

import shardcar_policy as sdk

SHARDS = []
NAMES = []


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global SHARDS
        SHARDS = sdk.config(config).get("shards") or []
        if not SHARDS:
            raise Err("config needs `shards`, a non-empty list of shard names")

    def info(self):
        return types.PluginInfo(name="hash-py", version="0.1.0", custom_extract=False)

    def set_topology(self, topology):
        global NAMES
        NAMES = sdk.shard_names(topology)

    def extract_key(self, facts):
        return facts.key_values()

    def route(self, facts, keys):
        if not keys:
            # No key in the statement: it concerns every shard of this policy.
            return sdk.decision(sdk.index(NAMES, s) for s in SHARDS)
        return sdk.decision(sdk.index(NAMES, SHARDS[sdk.partition(k, len(SHARDS))]) for k in keys)
