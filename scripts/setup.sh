#!/usr/bin/env bash
# Create .venv (once) and install fullduplex into it. Sourced by demo.sh and test.sh; safe to run again.
#
#   FULLDUPLEX_TORCH   the torch requirement to install (default: torch==2.13.0, the CPU build).
#                      GPU users: FULLDUPLEX_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#                      or any torch>=2.4 already suited to their machine.
#   FULLDUPLEX_VENV    where the virtual environment lives (default: .venv in the repository).
#   FULLDUPLEX_EXTRAS  extras to install, e.g. "dev" (test.sh sets it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FULLDUPLEX_VENV:-$ROOT/.venv}"
TORCH_REQ="${FULLDUPLEX_TORCH:-torch==2.13.0}"
EXTRAS="${FULLDUPLEX_EXTRAS:-}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: fullduplex needs Python >= 3.10 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

# Reinstall only when what we install changed.
stamp="$VENV/.fullduplex-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16) $TORCH_REQ [$EXTRAS]"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing $TORCH_REQ"
    # shellcheck disable=SC2086  # TORCH_REQ may carry pip options such as --index-url
    "$VENV/bin/python" -m pip install -q $TORCH_REQ
    spec="$ROOT"
    [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
    echo "==> installing fullduplex${EXTRAS:+ [$EXTRAS]}"
    "$VENV/bin/python" -m pip install -q -e "$spec"
    if [[ ",$EXTRAS," == *",dev,"* ]]; then
        # The reference implementation is a test-only oracle. Its own torch pin is older than ours, so it is
        # installed without its dependencies (the ones it imports are in the dev extra or the core).
        echo "==> installing the test oracle moshi==0.2.13 (--no-deps)"
        "$VENV/bin/python" -m pip install -q --no-deps "moshi==0.2.13"
        # The MLX oracle (format tests, tests/mlx): MLX with its CPU backend on Linux; moshi_mlx without its old
        # pins (only moshi_mlx.models is imported).
        echo "==> installing the MLX test oracle mlx==0.32.4, moshi_mlx==0.3.0 (--no-deps)"
        if [ "$(uname -s)" = "Linux" ]; then
            "$VENV/bin/python" -m pip install -q "mlx==0.32.4" "mlx-cpu==0.32.4"
        else
            "$VENV/bin/python" -m pip install -q "mlx==0.32.4"
        fi
        "$VENV/bin/python" -m pip install -q --no-deps "moshi_mlx==0.3.0"
    fi
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
