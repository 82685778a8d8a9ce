#!/usr/bin/env bash
# Installs the compatibility suite's real drivers: psycopg 3 and SQLAlchemy
# (PyPI, in a virtualenv under target/compat) and node-postgres (npm, in
# tests/compat/node/node_modules). Pinned versions; reinstalls only when the
# pins change.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/compat/venv
requirements=tests/compat/python/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
node=tests/compat/node
if ! cmp -s "$node/package-lock.json" "$node/node_modules/.shardcar-lock" 2>/dev/null; then
  npm ci --prefix "$node" --no-audit --no-fund --silent
  cp "$node/package-lock.json" "$node/node_modules/.shardcar-lock"
fi
