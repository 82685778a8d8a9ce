#!/usr/bin/env bash
# Builds a Python policy into a shardcar plugin component:
#   plugins/python/build.sh <project dir> <out.wasm>
# The project's app.py implements the `shardcar:policy` world; the SDK
# (shardcar_policy.py) and the contract (plugins/sdk/wit) come from here.
# componentize-py is taken from $COMPONENTIZE_PY, else PATH, else the venv
# plugins/python/install.sh makes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$1" && pwd)"
out="$2"
tool="${COMPONENTIZE_PY:-}"
if [ -z "$tool" ]; then
  tool="$(command -v componentize-py || true)"
fi
if [ -z "$tool" ] && [ -x "$here/../../target/plugin-tools/py/bin/componentize-py" ]; then
  tool="$here/../../target/plugin-tools/py/bin/componentize-py"
fi
if [ -z "$tool" ]; then
  echo "componentize-py is not installed: run plugins/python/install.sh (or pip install componentize-py==0.25.1)" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
"$tool" -d "$here/../sdk/wit" -w policy componentize app -p "$project" -p "$here" -o "$out"
# Its test cases go beside it, where shardcar looks for them.
for cases in "$project"/*.tests.toml; do
  [ -e "$cases" ] && cp "$cases" "${out%.wasm}.tests.toml"
done
