#!/usr/bin/env bash
# The whole test suite, from nothing: set up (with the dev extra and the test oracle), lint, then pytest.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/codec -k parity
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FULLDUPLEX_EXTRAS="${FULLDUPLEX_EXTRAS:-dev,eval,train,metrics}" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# Debian packages some tests drive: installed where we may (root with apt), else those tests are skipped.
need_debian() {  # need_debian "COMMANDS" "PACKAGES" "WHAT FOR"
    local missing=0 cmd
    for cmd in $1; do command -v "$cmd" >/dev/null || missing=1; done
    [ "$missing" = 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing $2 (for $3)"
        # shellcheck disable=SC2086
        apt-get install -y -q $2 >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q $2 >/dev/null; } \
            || echo "warning: could not install $2; $3 will be skipped"
    else
        echo "warning: $1 not found; $3 will be skipped (apt-get install $2)"
    fi
}
need_debian "chromium chromedriver" "chromium chromium-driver" "tests/server/test_web_page.py"
need_debian "espeak-ng" "espeak-ng" "tests/data/test_synth.py"
need_debian "haproxy" "haproxy" "tests/server/test_balancer.py"
# Record the exact versions this run used: a fresh machine installs the newest release within each range
# (docs/dependencies.md), so a later failure can be traced to a version change by comparing two logs.
echo "==> versions: $(python --version 2>&1), $(uname -sm)"
python -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/^/    /'
echo "==> ruff"
ruff check fullduplex tests benchmarks scripts
echo "==> pytest"
python -m pytest -q "$@"
