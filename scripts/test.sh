#!/usr/bin/env bash
# The whole test suite, from nothing: set up (with the dev extra and the test oracle), lint, then pytest.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/codec -k parity
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FULLDUPLEX_EXTRAS="${FULLDUPLEX_EXTRAS:-dev,eval,train}" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# The browser test drives Debian's headless Chromium; install it where we may (root with apt), else it is skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing chromium and chromium-driver (for tests/server/test_web_page.py)"
        apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
            || echo "warning: could not install chromium; the browser test will be skipped"
    else
        echo "warning: chromium/chromedriver not found; the browser test will be skipped (apt-get install chromium chromium-driver)"
    fi
fi
# The synthetic-dialogue tests speak with espeak-ng; install it the same way, else they are skipped.
if ! command -v espeak-ng >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing espeak-ng (for tests/data/test_synth.py)"
        apt-get install -y -q espeak-ng >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; } \
            || echo "warning: could not install espeak-ng; the synthetic-dialogue tests will be skipped"
    else
        echo "warning: espeak-ng not found; the synthetic-dialogue tests will be skipped (apt-get install espeak-ng)"
    fi
fi
# The load-balancer test runs Debian's HAProxy in front of two servers; install it the same way, else it is skipped.
if ! command -v haproxy >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing haproxy (for tests/server/test_balancer.py)"
        apt-get install -y -q haproxy >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q haproxy >/dev/null; } \
            || echo "warning: could not install haproxy; the load-balancer test will be skipped"
    else
        echo "warning: haproxy not found; the load-balancer test will be skipped (apt-get install haproxy)"
    fi
fi
echo "==> ruff"
ruff check fullduplex tests benchmarks scripts
echo "==> pytest"
python -m pytest -q "$@"
