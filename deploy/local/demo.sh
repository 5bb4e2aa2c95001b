#!/usr/bin/env bash
# The main job on an embedded default: installs ood-monitor in .venv, then runs `ood-monitor demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
"$root/deploy/local/bootstrap.sh"
exec "$root/.venv/bin/ood-monitor" demo "$@"
