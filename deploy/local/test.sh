#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need, then runs pytest.
# Extra arguments go to pytest (e.g. `deploy/local/test.sh tests/unit -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
"$root/deploy/local/bootstrap.sh" --test
set +e
"$root/.venv/bin/python" -m pytest "$@"
code=$?
set -e
if [[ $code == 5 ]]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $code
