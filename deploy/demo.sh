#!/usr/bin/env bash
# README command 1: local shards (2 primaries, 1 streaming replica), a sample
# schema, and shardcar in front of them on 127.0.0.1:6432. Ctrl-C stops
# everything and removes the temporary data. Extra arguments go to
# `shardcar demo` (e.g. --port 7432).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
cargo build --release --locked -p shardcar
exec target/release/shardcar demo "$@"
