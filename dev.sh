#!/usr/bin/env bash
# One entry point for people and CI:
#   ./dev.sh serve [claude-relay serve flags…]   set up .venv and run the daemon in the foreground
#   ./dev.sh test  [pytest args…]               set up .venv + both tested claude CLIs, lint, type-check,
#                                               test (all tests on the pin, then the e2e tier on the oldest)
#   ./dev.sh login                              log in the claude that `serve` uses (`claude auth login`)
#   ./dev.sh claude [VERSION]                   install a claude CLI (default: the pin), print its path
#   ./dev.sh record [NAME…]                     re-record the golden PTY streams on every tested version
# Everything it installs lives in .venv/ and .cache/ (both git-ignored). PYTHON=… picks the
# interpreter that creates .venv (default: python3).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
CLAUDE_VERSION=$(cat packaging/claude-cli-version)   # the pin: newest tested release
CLAUDE_OLDEST=$(cat packaging/claude-cli-oldest)     # oldest supported release

check_python() {  # a fresh machine: say what is missing instead of failing halfway
    command -v "$PY" >/dev/null || {
        echo "dev.sh: $PY not found; install Python >= 3.11 or set PYTHON=/path/to/python3.11" >&2
        exit 1
    }
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "dev.sh: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())')," \
            "claude-relay needs >= 3.11; set PYTHON=/path/to/python3.11 (or newer)" >&2
        exit 1
    }
    # Debian and Ubuntu split venv (and the ensurepip it needs) off into a package.
    "$PY" -c 'import ensurepip, venv' 2>/dev/null || {
        echo "dev.sh: $PY cannot create a venv; on Debian/Ubuntu: sudo apt install python3-venv" \
            "(or python3.X-venv for your version)" >&2
        exit 1
    }
}

venv() {  # $1: "" or "[dev]"
    if [ ! -x .venv/bin/python ]; then
        check_python
        "$PY" -m venv .venv || {
            rm -rf .venv
            echo "dev.sh: '$PY -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2
            exit 1
        }
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    local stamp=.venv/.installed$1
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q -e ".$1"
        touch "$stamp"
    fi
}

claude_bin() {  # $1: version (default: the pin); from npm, installed once into the cache
    local version=${1:-$CLAUDE_VERSION} native
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) native=linux-x64 ;;
        Linux-aarch64) native=linux-arm64 ;;
        Darwin-arm64) native=darwin-arm64 ;;
        Darwin-x86_64) native=darwin-x64 ;;
        *) echo "unsupported platform for the pinned claude CLI" >&2; exit 1 ;;
    esac
    local cache=.cache/claude-cli/$version
    local bin=$cache/node_modules/@anthropic-ai/claude-code-$native/claude
    if [ ! -x "$bin" ]; then
        command -v npm >/dev/null || { echo "npm is needed to install the claude CLI" >&2; exit 1; }
        mkdir -p "$cache"
        npm install --prefix "$cache" --no-audit --no-fund --loglevel=error \
            "@anthropic-ai/claude-code@$version" >&2
    fi
    [ -x "$bin" ] || { echo "claude CLI install failed: $bin missing" >&2; exit 1; }
    echo "$PWD/$bin"
}

serve_claude() {  # as `serve` picks it: $CLAUDE_RELAY_CLAUDE_BIN, else `claude` on PATH, else the pin
    if [ -n "${CLAUDE_RELAY_CLAUDE_BIN:-}" ]; then
        echo "$CLAUDE_RELAY_CLAUDE_BIN"
    elif command -v claude >/dev/null; then
        command -v claude
    else
        claude_bin
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    serve)
        venv ""
        if ! command -v claude >/dev/null && [ -z "${CLAUDE_RELAY_CLAUDE_BIN:-}" ]; then
            # No claude on PATH: the pinned CLI (log it in once with `./dev.sh login`).
            CLAUDE_RELAY_CLAUDE_BIN=$(claude_bin)
            export CLAUDE_RELAY_CLAUDE_BIN
        fi
        exec .venv/bin/claude-relay serve "$@"
        ;;
    login)
        # Logins live in ~/.claude, shared by every claude of this user, the daemon's included.
        exec "$(serve_claude)" auth login "$@"
        ;;
    test)
        venv "[dev]"
        pin=$(claude_bin "$CLAUDE_VERSION")
        oldest=$(claude_bin "$CLAUDE_OLDEST")
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        .venv/bin/mypy
        if [ $# -gt 0 ]; then
            CLAUDE_RELAY_TEST_CLAUDE_BIN=$pin exec .venv/bin/pytest "$@"
        fi
        # the e2e tier on the oldest supported claude first, then everything on the pin
        echo "== e2e on claude $CLAUDE_OLDEST (oldest supported)"
        # (tests of what no claude version changes — packaging, client SDKs, the balancer, the
        # dashboard page — run once, on the pin: marker pin_only)
        CLAUDE_RELAY_TEST_CLAUDE_BIN=$oldest .venv/bin/pytest -q -m "not pin_only" tests/e2e
        echo "== all tests on claude $CLAUDE_VERSION (pin)"
        CLAUDE_RELAY_TEST_CLAUDE_BIN=$pin exec .venv/bin/pytest
        ;;
    claude)
        claude_bin "${1:-$CLAUDE_VERSION}"
        ;;
    record)
        venv "[dev]"
        for v in "$CLAUDE_OLDEST" "$CLAUDE_VERSION"; do
            .venv/bin/python -m tests.golden.record --claude "$(claude_bin "$v")" "$@"
        done
        ;;
    *)
        sed -n '2,10p' "$0" >&2
        exit 2
        ;;
esac
