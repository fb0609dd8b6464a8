#!/usr/bin/env bash
# The whole test suite, from nothing: set up (with the dev extra and the test oracle), lint, then pytest.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/codec -k parity
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FULLDUPLEX_EXTRAS="${FULLDUPLEX_EXTRAS:-dev,eval,train}" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
echo "==> ruff"
ruff check fullduplex tests benchmarks scripts
echo "==> pytest"
python -m pytest -q "$@"
