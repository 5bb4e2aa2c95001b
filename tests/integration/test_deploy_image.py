"""The container image of deploy/Containerfile, built and run on this machine (docs/deploy.md).

No Docker engine runs here: Debian's `buildah` builds the real image file with `--isolation chroot`,
on a Debian bookworm base with Python 3.11 that `debootstrap` makes from the Debian mirror apt uses
(passed as the PYTHON build argument, as a user would pass python:3.11-slim-bookworm). torch comes
from the files pip already has on local disk: the build mounts what `pip config list` names (index
folders, find-links, the CA bundle) read-only and hands it to pip as /etc/pip.conf, in the build
command only, never in the image. buildah keeps its layers under var/image-test/, so a second run on
the same machine rebuilds only what changed.

Then, inside the image, on this machine's network: `ood-monitor --version` as the non-root user,
`ood-monitor db upgrade` against the PostgreSQL server here, `ood-monitor score` on the bundled
samples (the same rows as outside the image), and `ood-monitor run --role scoring` (two worker processes)
against a Tansu broker for a known number of messages, counting the stored rows and asking the probes and the image's health check. The
image holds no configured secret and runs as a non-root user.

Build time, image size and the time of every step are printed, and written to
var/image-test/figures.json.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.daemon_support import (
    CALIBRATION_SAMPLES, StoredRows, daemon_config, image_stream, produce,
)
from tests.services import ROOT, TansuBroker, create_tansu_topic, free_port, postgres_database, wait_until
from tests.unit.deploy_files import read_env_file

# The first test builds the image (minutes; longer on a busy machine), so the limit is the build's.
pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(3600)]

WORKDIR = ROOT / "var" / "image-test"
BASE_IMAGE = "localhost/ood-monitor-base:bookworm-python3"
IMAGE = "localhost/ood-monitor:test"
IMAGE_USER = "10001"
DEBIAN_MIRROR_DEFAULT = "http://deb.debian.org/debian"
FIGURES: dict[str, float | str] = {}


def _log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _timed(name: str, started: float) -> float:
    seconds = round(time.monotonic() - started, 1)
    FIGURES[f"{name}_s"] = seconds
    _log(f"{name}: {seconds} s")
    return seconds


class Buildah:
    """buildah on a storage of the tests' own (var/image-test/storage), chroot isolation, host network."""

    def __init__(self, workdir: Path):
        binary = shutil.which("buildah")
        if binary is None:
            raise AssertionError("buildah is needed for the image test: deploy/local/bootstrap.sh --test installs "
                                 "it as root (apt-get install buildah debootstrap)")
        self.prefix = [binary, "--root", str(workdir / "storage"), "--runroot", str(workdir / "run"),
                       "--storage-driver", "overlay"]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def has_image(self, name: str) -> bool:
        return self("images", "--quiet", name, check=False).stdout.strip() != ""

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", "--type", "image", name).stdout)

    def container(self, image: str) -> str:
        return self("from", "--pull-never", image).stdout.strip().splitlines()[-1]

    def run_args(self, container: str, command: list[str], env: dict[str, str] | None = None,
                 volumes: tuple[str, ...] = ()) -> list[str]:
        args = [*self.prefix, "run", "--isolation", "chroot"]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        for volume in volumes:
            args += ["--volume", volume]
        return [*args, container, "--", *command]


# --- the base image and the build ----------------------------------------------------------------


def _debian_mirror() -> str:
    """The mirror apt uses here (deb822 or one-line sources), else Debian's own."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.is_file():
            text = path.read_text()
            match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M)
            if match:
                return match.group(1)
    return DEBIAN_MIRROR_DEFAULT


def _make_base_image(buildah: Buildah) -> None:
    """Debian bookworm minbase with Python 3.11 and venv, from the Debian mirror, as an image."""
    rootfs = WORKDIR / "rootfs-bookworm"
    done = rootfs / ".complete"
    if not done.is_file():
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).is_file():
            raise AssertionError("debootstrap is needed for the image test's base: deploy/local/bootstrap.sh --test "
                                 "installs it as root")
        shutil.rmtree(rootfs, ignore_errors=True)
        started = time.monotonic()
        _log(f"debootstrap bookworm (python3, python3-venv) from {_debian_mirror()}")
        result = subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                                 "bookworm", str(rootfs), _debian_mirror()], capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        _timed("debootstrap", started)
        done.touch()
    started = time.monotonic()
    archive = WORKDIR / "rootfs-bookworm.tar"
    subprocess.run(["tar", "-C", str(rootfs), "--exclude", "./.complete", "-cf", str(archive), "."], check=True,
                   timeout=600)
    container = buildah("from", "scratch").stdout.strip().splitlines()[-1]
    try:
        buildah("add", container, str(archive), "/")
        buildah("config", "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", container)
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container, check=False)
        archive.unlink(missing_ok=True)
    _timed("base_image_import", started)


def _pip_settings_for_the_build(workdir: Path) -> tuple[Path, list[str]]:
    """This machine's pip configuration as a pip.conf for the build, and the read-only mounts it needs:
    pip in the image reaches the same indexes, local wheel folders and CA bundle as pip here."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    wanted = ("index-url", "extra-index-url", "find-links", "cert", "constraint", "trusted-host")
    values: dict[str, str] = {}
    for line in listing.splitlines():
        key, _, raw = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in wanted:
            values[name] = raw.strip().strip("'\"")
    mounts: set[str] = set()
    for name in ("index-url", "extra-index-url", "find-links", "cert", "constraint"):
        for item in values.get(name, "").split():
            path = Path(item.removeprefix("file://"))
            if not (path.is_absolute() and path.exists()):
                continue  # a registry on the network: reached through the CA bundle
            # A local index's pages (DIR/simple/NAME/) may link to files beside it (../../files/).
            top = path.parent if path.name == "simple" else path
            mounts.add(f"{top}:{top}:ro")
    config = workdir / "pip.conf"
    config.write_text("[global]\n" + "".join(f"{name} = {value}\n" for name, value in values.items()))
    return config, sorted(mounts)


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    return Buildah(WORKDIR)


@pytest.fixture(scope="session")
def image(buildah) -> str:
    """The image of deploy/Containerfile (TORCH=cuda: the torch build pip has on local disk)."""
    if not buildah.has_image(BASE_IMAGE):
        _make_base_image(buildah)
    pip_conf, mounts = _pip_settings_for_the_build(WORKDIR)
    volumes = [f"{pip_conf}:/etc/pip.conf:ro", *mounts]
    previous = buildah("images", "--quiet", "--no-trunc", IMAGE, check=False).stdout.strip()
    started = time.monotonic()
    args = ["build", "--isolation", "chroot", "--layers", "--format", "docker", "--pull-never",
            "--build-arg", f"PYTHON={BASE_IMAGE}", "--build-arg", "TORCH=cuda"]
    for volume in volumes:
        args += ["--volume", volume]
    args += ["-f", str(ROOT / "deploy" / "Containerfile"), "-t", IMAGE, str(ROOT)]
    log = WORKDIR / "build.log"
    _log(f"building {IMAGE} (log: {log})")
    with open(log, "w") as out:
        result = subprocess.run([*buildah.prefix, *args], stdout=out, stderr=subprocess.STDOUT, timeout=2400)
    assert result.returncode == 0, f"the image build failed:\n{log.read_text()[-4000:]}"
    _timed("build", started)
    # The previous build's image goes; the intermediate layers stay as the cache of the next build.
    current = buildah("images", "--quiet", "--no-trunc", IMAGE).stdout.strip()
    if previous and previous != current:
        buildah("rmi", previous, check=False)
    size = buildah("images", "--format", "{{.Size}}", IMAGE).stdout.strip()
    FIGURES["image_size"] = size
    _log(f"image size: {size}")
    return IMAGE


@pytest.fixture(scope="session", autouse=True)
def _write_figures():
    yield
    if FIGURES:
        WORKDIR.mkdir(parents=True, exist_ok=True)
        (WORKDIR / "figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
        _log("figures: " + ", ".join(f"{key} {value}" for key, value in FIGURES.items()))


@pytest.fixture
def container(buildah, image):
    name = buildah.container(image)
    yield name
    buildah("rm", name, check=False)


def run_in(buildah: Buildah, container: str, command: list[str], *, env: dict[str, str] | None = None,
           volumes: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(buildah.run_args(container, command, env, volumes), capture_output=True, text=True,
                          timeout=timeout)


# --- the tests -------------------------------------------------------------------------------------


def test_image_runs_ood_monitor_as_a_non_root_user(buildah, image, container):
    started = time.monotonic()
    result = run_in(buildah, container, ["ood-monitor", "--version"])
    assert result.returncode == 0, result.stderr
    from monitor import __version__

    assert result.stdout.strip() == f"ood-monitor {__version__}"
    _timed("version", started)
    identity = run_in(buildah, container, ["id", "-u"])
    assert identity.stdout.strip() == IMAGE_USER
    config = buildah.inspect(image)["Docker"]["config"]
    assert config["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
    assert config["Entrypoint"] == ["ood-monitor"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    # The code is not writable by the user that runs it; the two state folders are.
    probe = run_in(buildah, container, ["sh", "-c", "touch /opt/ood-monitor/x 2>/dev/null && echo writable; "
                                        "touch /var/lib/ood-monitor/x /var/cache/ood-monitor/x && echo state-ok"])
    assert probe.stdout.split() == ["state-ok"], probe.stdout + probe.stderr


def test_image_holds_no_configured_secret(buildah, image, container):
    from monitor.settings import SECRET_KEYS

    config = buildah.inspect(image)["Docker"]["config"]
    for variable in config.get("Env") or []:
        key = variable.split("=", 1)[0]
        assert key != "MONITOR_STORE__URL" and key.split("__")[-1].lower() not in SECRET_KEYS, variable
    # No value of the environment files that ship with the deployment (demo passwords, the session
    # secret, the account hash), no env file, and none of the build's pip settings, anywhere in it.
    secrets = set()
    for env_file in (ROOT / "deploy").rglob("*.env"):
        for key, value in read_env_file(env_file, strip_quotes=True).items():
            if key.endswith(("PASSWORD", "SECRET")):
                secrets.add(value)
            elif key.endswith("__URL"):
                secrets.add(urlsplit(value).password or "")
            elif key.endswith(("__ACCOUNTS", "__TOKENS")):
                secrets.update(entry.split(":", 2)[-1] for entry in value.split(",") if entry)
    # The Kubernetes example's CHANGE-ME placeholders are not secrets; the compose demo values are.
    secrets = {secret for secret in secrets if len(secret) >= 8 and "CHANGE-ME" not in secret}
    assert len(secrets) >= 3, secrets  # the demo database password, session secret and login hash
    patterns = "\n".join(sorted(secrets))
    # What the test's build mounted (pip.conf, local indexes, the CA bundle) is left by buildah as empty
    # mount points at most: nothing of it may be in the image.
    _, mounts = _pip_settings_for_the_build(WORKDIR)
    targets = " ".join(["/etc/pip.conf", *(mount.split(":")[1] for mount in mounts
                                           if not mount.startswith("/etc/ssl/"))])
    found = run_in(buildah, container, ["sh", "-c", "printf '%s\\n' \"$PATTERNS\" > /tmp/patterns; "
                                        "grep -rlF -f /tmp/patterns /etc /opt /var /root /home /usr/local 2>/dev/null; "
                                        "find / -xdev -name '*.env' -type f 2>/dev/null; "
                                        f"find {targets} -type f -size +0 2>/dev/null; true"],
                   env={"PATTERNS": patterns})
    assert found.stdout.strip() == "", f"secrets or build settings inside the image:\n{found.stdout}"


def test_db_upgrade_in_the_image_migrates_this_machines_postgresql(buildah, image, container):
    from sqlalchemy import create_engine

    from monitor.store.migrate import current_revision, head_revision

    with postgres_database("image") as url:
        started = time.monotonic()
        result = run_in(buildah, container, ["ood-monitor", "db", "upgrade"], env={"MONITOR_STORE__URL": url})
        assert result.returncode == 0, result.stdout + result.stderr
        _timed("db_upgrade", started)
        engine = create_engine(url)
        try:
            assert current_revision(engine) == head_revision()
        finally:
            engine.dispose()
        current = run_in(buildah, container, ["ood-monitor", "db", "current"], env={"MONITOR_STORE__URL": url})
        assert current.returncode == 0, current.stdout + current.stderr


def _score_rows(text: str) -> dict[str, dict[str, str]]:
    return {Path(row["path"]).name: row for row in csv.DictReader(io.StringIO(text))}


def test_score_in_the_image_gives_the_rows_of_the_package(buildah, image, container, tmp_path):
    from monitor.classifiers import ASSETS_DIR

    arguments = ["score", "--model", "demo", "--device", "cpu", "--calibration-samples", str(CALIBRATION_SAMPLES),
                 "--no-progress", "--format", "csv"]
    started = time.monotonic()
    inside = run_in(buildah, container, ["sh", "-c",
                                         "ood-monitor " + " ".join(arguments) + ' "$(python -c \'import monitor.'
                                         'classifiers as c; print(c.ASSETS_DIR / "samples")\')"'])
    assert inside.returncode == 0, inside.stderr[-3000:]
    _timed("score", started)
    outside = subprocess.run([sys.executable, "-m", "monitor.cli", *arguments, str(ASSETS_DIR / "samples")],
                             capture_output=True, text=True, timeout=600, cwd=ROOT,
                             env={**os.environ, "MONITOR_CACHE_DIR": str(tmp_path)})
    assert outside.returncode == 0, outside.stderr[-3000:]
    rows_inside, rows_outside = _score_rows(inside.stdout), _score_rows(outside.stdout)
    images = {path.name for path in (ASSETS_DIR / "samples").glob("*.png")}
    assert set(rows_inside) == set(rows_outside) == images
    for name, row in rows_inside.items():
        assert row["predicted"] == rows_outside[name]["predicted"], name
        assert float(row["MP"]) == pytest.approx(float(rows_outside[name]["MP"]), abs=1e-5), name


def test_run_in_the_image_stores_every_message_of_a_local_broker(buildah, image, container, tmp_path):
    count, broken = 120, 5
    topic = "image-test"
    config_mount = f"{tmp_path / 'monitor.toml'}:/etc/ood-monitor/monitor.toml:ro"
    broker = TansuBroker().start()
    try:
        with postgres_database("imagerun") as url:
            create_tansu_topic(broker, topic, partitions=3)
            messages = image_stream(count - broken, "img") + [(f"broken-{i}", b"\x89PNG\r\n\x1a\n")
                                                               for i in range(broken)]
            produce(broker.bootstrap, None, topic, messages)
            upgrade = run_in(buildah, container, ["ood-monitor", "db", "upgrade"], env={"MONITOR_STORE__URL": url})
            assert upgrade.returncode == 0, upgrade.stderr
            port = free_port()
            daemon_config(tmp_path / "monitor.toml", bootstrap=broker.bootstrap, api_version="auto", topic=topic,
                          group="image-test", store_url=url, cache_dir=Path("/var/cache/ood-monitor/calibrations"),
                          port=port, batch_size=16)
            _run_daemon_until_stored(buildah, container, config_mount, url, port, count, broken, tmp_path)
    finally:
        broker.stop()
    # Once nothing answers on its port, the health check says so.
    health = run_in(buildah, container, ["python", "/opt/ood-monitor/healthcheck.py"], volumes=(config_mount,),
                    timeout=120)
    assert health.returncode == 1


def _run_daemon_until_stored(buildah, container, config_mount, url, port, count, broken, tmp_path) -> None:
    import httpx

    log_path = tmp_path / "run.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(buildah.run_args(container, ["ood-monitor", "run", "--role", "scoring"],
                                                    env={"MONITOR_STREAM__WORKERS": "2"}, volumes=(config_mount,)),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    rows = StoredRows(url)
    try:
        def stored() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"`ood-monitor run` in the image exited with {process.returncode}:\n"
                                     f"{log_path.read_text(errors='replace')[-3000:]}")
            return rows.total() >= count

        wait_until(stored, 600, f"{count} rows stored by the daemon in the image", interval=0.5)
        _timed("run_until_stored", started)
        assert rows.count("samples") == count - broken and rows.count("rejects") == broken
        readiness: list = []

        def ready() -> bool:  # the second worker may still be loading the model when the first is done
            readiness[:] = [httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)]
            return readiness[0].status_code == 200

        try:
            wait_until(ready, 120, "/readyz to say ready")
        except TimeoutError as error:
            raise AssertionError(f"{error}: {readiness[0].text}") from None

        def metrics_count_every_message() -> bool:  # the workers report to the supervisor every half second
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return bool(re.search(rf"^ood_monitor_messages_total {count}\.0$", text, re.M)
                        and re.search(r"^ood_monitor_workers 2\.0$", text, re.M))

        wait_until(metrics_count_every_message, 30, "/metrics to count every message of both workers")
        health = run_in(buildah, container, ["python", "/opt/ood-monitor/healthcheck.py"], volumes=(config_mount,),
                        timeout=120)
        assert health.returncode == 0, health.stderr
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        except ProcessLookupError:
            pass
        rows.close()
