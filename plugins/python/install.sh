#!/usr/bin/env bash
# Installs componentize-py (PyPI, pinned in requirements.txt) in a
# virtualenv under target/plugin-tools/py, where build.sh finds it.
# Reinstalls only when the pin changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/plugin-tools/py
requirements=plugins/python/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
