#!/usr/bin/env bash
# One entry point for people and CI:
#   ./dev.sh serve [claude-relay serve flags…]   set up .venv and run the daemon in the foreground
#   ./dev.sh test  [pytest args…]               set up .venv + the pinned claude CLI, lint, type-check, test
#   ./dev.sh claude                             install the pinned claude CLI, print its path
# Everything it installs lives in .venv/ and .cache/ (both git-ignored).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
CLAUDE_VERSION=$(cat packaging/claude-cli-version)
CLAUDE_CACHE=.cache/claude-cli/$CLAUDE_VERSION

venv() {  # $1: "" or "[dev]"
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    local stamp=.venv/.installed$1
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q -e ".$1"
        touch "$stamp"
    fi
}

claude_bin() {  # the pinned CLI from npm, installed once into the cache
    local native
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) native=linux-x64 ;;
        Linux-aarch64) native=linux-arm64 ;;
        Darwin-arm64) native=darwin-arm64 ;;
        Darwin-x86_64) native=darwin-x64 ;;
        *) echo "unsupported platform for the pinned claude CLI" >&2; exit 1 ;;
    esac
    local bin=$CLAUDE_CACHE/node_modules/@anthropic-ai/claude-code-$native/claude
    if [ ! -x "$bin" ]; then
        command -v npm >/dev/null || { echo "npm is needed to install the claude CLI" >&2; exit 1; }
        mkdir -p "$CLAUDE_CACHE"
        npm install --prefix "$CLAUDE_CACHE" --no-audit --no-fund --loglevel=error \
            "@anthropic-ai/claude-code@$CLAUDE_VERSION" >&2
    fi
    [ -x "$bin" ] || { echo "claude CLI install failed: $bin missing" >&2; exit 1; }
    echo "$PWD/$bin"
}

cmd=${1:-}
shift || true
case "$cmd" in
    serve)
        venv ""
        if ! command -v claude >/dev/null && [ -z "${CLAUDE_RELAY_CLAUDE_BIN:-}" ]; then
            # No claude on PATH: use the pinned CLI (log in once with `$(./dev.sh claude) /login`).
            export CLAUDE_RELAY_CLAUDE_BIN=$(claude_bin)
        fi
        exec .venv/bin/claude-relay serve "$@"
        ;;
    test)
        venv "[dev]"
        export CLAUDE_RELAY_TEST_CLAUDE_BIN=$(claude_bin)
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        .venv/bin/mypy
        exec .venv/bin/pytest "$@"
        ;;
    claude)
        claude_bin
        ;;
    *)
        sed -n '2,6p' "$0" >&2
        exit 2
        ;;
esac
