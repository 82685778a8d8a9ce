"""What every compatibility script shares: where shardcar is, the prefix of
its tables, and how a step is reported or fails."""

import os

DSN = os.environ["SHARDCAR_DSN"]
PREFIX = os.environ["COMPAT_PREFIX"]


def step(what):
    print(f"ok: {what}", flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)
