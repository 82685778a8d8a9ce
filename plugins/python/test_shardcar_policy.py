"""The SDK's Postgres-compatible hashing, checked on the host against
values PostgreSQL 15 computes (the Rust SDK's pghash tests use the same).
The component-only modules it imports are stood in for here.

    python3 -m unittest plugins/python/test_shardcar_policy.py
"""

import os
import sys
import types as pytypes
import unittest
from dataclasses import dataclass


def _stand_ins():
    err = pytypes.ModuleType("componentize_py_types")
    err.Err = type("Err", (Exception,), {})
    wit = pytypes.ModuleType("wit_world")
    imports = pytypes.ModuleType("wit_world.imports")
    types = pytypes.ModuleType("wit_world.imports.types")

    @dataclass
    class Value_Int:
        value: int

    @dataclass
    class Value_Text:
        value: str

    @dataclass
    class Value_Null:
        pass

    types.Value_Int, types.Value_Text, types.Value_Null = Value_Int, Value_Text, Value_Null
    types.Role = pytypes.SimpleNamespace(ANY=2)
    imports.types = types
    wit.imports = imports
    sys.modules.update(
        {"componentize_py_types": err, "wit_world": wit, "wit_world.imports": imports, "wit_world.imports.types": types}
    )
    return types


types = _stand_ins()
sys.path.insert(0, os.path.dirname(__file__))
import shardcar_policy as sdk  # noqa: E402


def signed(x):
    return x - (1 << 64) if x >= 1 << 63 else x


class PostgresHash(unittest.TestCase):
    def test_hash_functions_match_postgres(self):
        s = sdk.PARTITION_SEED
        self.assertEqual(signed(sdk.int8_extended(42, s)), 7363975540656877951)
        self.assertEqual(signed(sdk.int8_extended(-7, s)), -7298374200968567817)
        self.assertEqual(signed(sdk.int8_extended(0, 0)), 4154612158245552303)
        self.assertEqual(signed(sdk.bytes_extended(b"acme", s)), -3006037837944560592)
        self.assertEqual(signed(sdk.bytes_extended(b"a longer tenant name here", s)), -4080222085918227424)
        self.assertEqual(signed(sdk.bytes_extended(b"", s)), -5700645584453517373)

    def test_keys_land_where_postgres_partitions_them(self):
        ints = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (42, 0)]
        for key, part in ints:
            self.assertEqual(sdk.partition(types.Value_Int(key), 2), part, key)
        texts = [("acme", 2), ("globex", 2), ("hooli", 2), ("initech", 0), ("umbrella", 1)]
        for key, part in texts:
            self.assertEqual(sdk.partition(types.Value_Text(key), 3), part, key)
        self.assertEqual(sdk.partition(types.Value_Null(), 7), 0)


if __name__ == "__main__":
    unittest.main()
