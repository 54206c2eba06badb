#!/usr/bin/env bash
# Set up optdepth on a fresh Debian machine: the Fashion-MNIST package (when root with apt),
# a virtual environment in .venv, pinned dependencies and optdepth itself (editable).
# Safe to re-run: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if [ ! -d /usr/share/datasets/fashion-mnist ] || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist python3-venv >/dev/null
  fi
else
  echo "setup: no root apt-get; Fashion-MNIST will come from --data-dir or torchvision's download" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/ci.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "setup: done (.venv/bin/optdepth)"
