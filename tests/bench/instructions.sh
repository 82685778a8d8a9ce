#!/usr/bin/env bash
# Instructions shardcar executes per statement (not part of the test suite):
# pgbench -S through shardcar (one shard, the hash plugin on pgbench's
# tables) with shardcar under callgrind, counted only while pgbench runs at
# full speed (connections made, caches warm). Unlike time, the count does
# not move with the machine's load: it compares two commits exactly.
# Usage: tests/bench/instructions.sh [seconds counted per mode, default 5]
# With SHARDCAR_CALLGRIND_DIR set, the dumps are kept there (one per mode)
# for callgrind_annotate --inclusive=yes.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-5}
deploy/setup.sh >/dev/null
command -v valgrind >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends valgrind >/dev/null
}
cargo build --profile profiling --locked -p shardcar
bin=$PWD/target/profiling/shardcar
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); port=$(free_port); admin=$(free_port)
as_pg=(); [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
cleanup() {
  [ -n "${sc_pid:-}" ] && kill "$sc_pid" 2>/dev/null && wait "$sc_pid" 2>/dev/null
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" start >/dev/null
pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -i -s 1 -q postgres >/dev/null 2>&1

cat >"$work/shardcar.toml" <<EOF
[listen]
addr = "127.0.0.1:$port"
admin = "127.0.0.1:$admin"

[[users]]
name = "app"
password = "bench"

[pool]
size = 16
reuse_unnamed_statements = true

[[shards]]
name = "s0"
primary = "postgres://postgres@127.0.0.1:$pg_port/postgres"

[routing]
default_shard = "s0"
read_replicas = false

[[policies]]
name = "hashed"
plugin = "hash"
config = { shards = ["s0"] }

[[tables]]
name = "pgbench_accounts"
key = "aid"
policy = "hashed"
EOF
# SHARDCAR_REMEMBERED_DECISIONS=0 compares with every statement calling the plugin.
if [ -n "${SHARDCAR_REMEMBERED_DECISIONS:-}" ]; then
  printf '\n[plugins]\nremembered_decisions = %s\n' "$SHARDCAR_REMEMBERED_DECISIONS" >>"$work/shardcar.toml"
fi
SHARDCAR_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.%p" \
  "$bin" run --config "$work/shardcar.toml" >"$work/valgrind.log" 2>&1 &
sc_pid=$!
export PGPASSWORD=bench
for _ in $(seq 120); do
  psql -h 127.0.0.1 -p "$port" -U app -d postgres -Atc "select 1" >/dev/null 2>&1 && break
  sleep 1
done
statements() {
  curl -s "http://127.0.0.1:$admin/metrics" | awk '/^shardcar_statements_total/ {n += $NF} END {print n + 0}'
}

# SHARDCAR_BENCH_KEYS=N: pgbench -S's statement with its key drawn from
# 1..N rather than every account (keys that repeat, as hot keys do).
workload=(-S)
if [ -n "${SHARDCAR_BENCH_KEYS:-}" ]; then
  printf '\\set aid random(1, %s)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' "$SHARDCAR_BENCH_KEYS" >"$work/keys.sql"
  workload=(-f "$work/keys.sql")
fi
echo "instructions per statement, pgbench ${workload[*]}, 8 clients, 1 shard + hash plugin (callgrind, $seconds s per mode)"
for mode in simple extended prepared; do
  pgbench -h 127.0.0.1 -p "$port" -U app "${workload[@]}" -M "$mode" -c 8 -T $((seconds + 20)) postgres >"$work/pgbench.log" 2>&1 &
  load=$!
  sleep 3
  # The scrapes stay outside the count; the statements that straddle the
  # switch (a few, against thousands) are the count's error.
  before=$(statements)
  callgrind_control -i on "$sc_pid" >/dev/null 2>&1
  sleep "$seconds"
  callgrind_control -i off "$sc_pid" >/dev/null 2>&1
  after=$(statements)
  callgrind_control -d "$mode" "$sc_pid" >/dev/null 2>&1
  callgrind_control -z "$sc_pid" >/dev/null 2>&1
  kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
  dump=$(grep -l "^desc: Trigger: dump $mode\$" "$work"/callgrind.* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  n=$((after - before))
  printf '%-9s %7d instructions per statement (%d statements)\n' "$mode" $((total / (n > 0 ? n : 1))) "$n"
  if [ -n "${SHARDCAR_CALLGRIND_DIR:-}" ]; then
    mkdir -p "$SHARDCAR_CALLGRIND_DIR"
    cp "$dump" "$SHARDCAR_CALLGRIND_DIR/$mode.callgrind"
    echo "$n" >"$SHARDCAR_CALLGRIND_DIR/$mode.statements"
  fi
done
