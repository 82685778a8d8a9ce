#!/usr/bin/env bash
# Installs what shardcar's build, demo and tests need on a Debian machine.
# Idempotent: installs only what is missing. Used by deploy/demo.sh and tests/run.sh.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v clang >/dev/null 2>&1 || need+=(clang)          # pg_query's bindings
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ "${SHARDCAR_SETUP_COMPAT:-0}" = 1 ]; then
  # The driver compatibility suite (tests/compat): Python drivers in a
  # virtualenv, node-postgres from npm.
  python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # pgjdbc from Debian, and a JDK to compile the suite's Java program.
  command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
  [ -e /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
fi
if [ "${SHARDCAR_SETUP_BROWSER:-0}" = 1 ]; then
  # The dashboard's browser test (tests/run.sh asks for these).
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi

if [ "${SHARDCAR_SETUP_FLEET:-0}" = 1 ]; then
  # The fleet view's test runs a real Prometheus scraping several sidecars.
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${need[*]}"
  for attempt in 1 2 3 4 5; do
    # apt may be locked for a moment by another process; refresh lists on failure.
    if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; then
      break
    fi
    [ "$attempt" -eq 5 ] && { echo "setup: apt-get install failed" >&2; exit 1; }
    $sudo apt-get update -q || true
    sleep $((attempt * 3))
  done
fi

for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
# Routing plugins are WebAssembly components and the dashboard is a
# WebAssembly app; sidecar/build.rs builds both.
for target in wasm32-wasip2 wasm32-unknown-unknown; do
  rustup target list --installed 2>/dev/null | grep -q "^$target\$" || rustup target add "$target"
done
