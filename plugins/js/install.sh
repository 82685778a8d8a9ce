#!/usr/bin/env bash
# Installs componentize-js (npm, pinned in package-lock.json) under
# plugins/js/node_modules, where build.mjs finds it. Reinstalls only when
# the lock changes.
set -euo pipefail
cd "$(dirname "$0")"
if ! cmp -s package-lock.json node_modules/.shardcar-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --silent
  cp package-lock.json node_modules/.shardcar-lock
fi
