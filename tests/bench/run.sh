#!/usr/bin/env bash
# The benchmark (not part of the test suite): builds shardcar and the
# benchmark in release mode, then runs pgbench against direct Postgres,
# PgBouncer, shardcar (1 shard; 2 shards + hash plugin) and PgCat when
# PGCAT_BIN is set. Arguments go to shardcar-bench (--seconds, --rounds,
# --clients, --pool, --scale, --idle-clients, --out). Results:
# target/bench/results.json and target/bench/tps.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/setup.sh
command -v pgbouncer >/dev/null 2>&1 && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbouncer fonts-dejavu-core
}
# The Debian package starts its own PgBouncer service; the benchmark runs its own.
cargo build --release --locked -p shardcar -p shardcar-bench
exec target/release/shardcar-bench "$@"
