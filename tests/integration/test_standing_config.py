"""Standing suite, configuration: what a new user gets wrong, run as the real commands.

Each case starts `ood-monitor <command> --config FILE` as a process and expects exit status 2, a
message naming the key or the service and the problem, no traceback, and an answer within a bounded
time: typo'd keys, wrong types from the file and from the environment, plaintext passwords, missing
and garbage weights, brokers and databases that refuse connections or never answer. Everything that
needs no network is reported at once, before any connection is tried.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from tests.services import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.standing]

# Generous, for a loaded 2-core machine: the checks run before the service's heavy imports, and the
# connections are tried for 2 s. Before the start-up checks, a broker that was down took 37 s to be
# reported, and a plaintext password waited for the database, the model and Kafka.
BOUND_S = 30.0
# Reading a weights file needs torch, which takes long to import on a busy machine.
WEIGHTS_BOUND_S = 90.0


@dataclass(frozen=True)
class Case:
    name: str
    config: str  # TOML; {store}, {closed}, {silent}, {weights} are filled in
    expected: tuple[str, ...]  # texts the error must contain
    command: tuple[str, ...] = ("run",)
    environ: dict[str, str] = field(default_factory=dict)
    secret: str | None = None  # a text that must never be printed
    bound_s: float = BOUND_S


GOOD = """
[store]
url = "{store}"
connect_timeout_s = 2
[kafka]
bootstrap_servers = ["{broker}"]
connect_timeout_ms = 2000
"""

CASES = [
    Case("typo-in-a-key", GOOD + "bootstrap_server = ['x:1']\n",
         ("unknown key [kafka] bootstrap_server (did you mean bootstrap_servers?)",)),
    Case("unknown-section", GOOD + "[stram]\nbatch_size = 8\n", ("unknown section [stram] (did you mean stream?)",)),
    Case("wrong-type-in-the-file", GOOD + "[stream]\nbatch_size = \"64\"\n",
         ("[stream] batch_size: expected an integer, got '64'",)),
    Case("value-out-of-range", GOOD + "[stream]\ndecode_threads = -1\n",
         ("[stream] decode_threads: -1 is below the minimum 0",)),
    Case("wrong-type-from-the-environment", GOOD, ("[web] port: expected an integer, got 'eighty' (from $MONITOR_WEB__PORT)",),
         environ={"MONITOR_WEB__PORT": "eighty"}),
    Case("unknown-key-from-the-environment", GOOD, ("unknown key [stream] batchsize",),
         environ={"MONITOR_STREAM__BATCHSIZE": "8"}),
    Case("plaintext-password", GOOD + "[web]\naccounts = [\"alice:admin:hunter2-plaintext\"]\n",
         ("[web] accounts[0] (alice)", "plaintext password or token is never accepted",
          "ood-monitor web hash-password --name alice --role admin"), secret="hunter2-plaintext"),
    Case("plaintext-password-for-the-web-role", GOOD + "[web]\naccounts = [\"alice:admin:hunter2-plaintext\"]\n",
         ("[web] accounts[0] (alice)",), command=("web",), secret="hunter2-plaintext"),
    Case("entry-without-a-role", GOOD + "[web]\naccounts = [\"alice:hunter2-plaintext\"]\n",
         ("[web] accounts[0]: expected 'NAME:ROLE:HASH'",), secret="hunter2-plaintext"),
    Case("missing-weights", GOOD + "[model]\nspec = \"resnet18\"\nnum_classes = 10\nweights = \"{missing}\"\n",
         ("[model] weights: no such file",)),
    Case("garbage-weights", GOOD + "[model]\nspec = \"resnet18\"\nnum_classes = 10\nweights = \"{weights}\"\n",
         ("[model] weights: weights file", "cannot be read"), bound_s=WEIGHTS_BOUND_S),
    Case("bad-store-url", GOOD.replace("{store}", "mysql://db/monitor"), ("[store] url",)),
    Case("everything-at-once",
         GOOD + "bootstrap_server = ['x:1']\n[web]\naccounts = [\"alice:admin:hunter2-plaintext\"]\n"
                "[model]\nspec = \"resnet18\"\nnum_classes = 10\nweights = \"{missing}\"\n",
         ("unknown key [kafka] bootstrap_server", "[web] accounts[0] (alice)", "[model] weights: no such file",
          "[stream] batch_size: expected an integer"),
         environ={"MONITOR_STREAM__BATCH_SIZE": "many"}, secret="hunter2-plaintext"),
    Case("broker-refuses", GOOD.replace("{broker}", "127.0.0.1:{closed}"),
         ("cannot reach the Kafka brokers 127.0.0.1:{closed} within 2 s",)),
    Case("broker-never-answers", GOOD.replace("{broker}", "127.0.0.1:{silent}"),
         ("cannot reach the Kafka brokers 127.0.0.1:{silent} within 2 s",)),
    Case("database-refuses", GOOD.replace("{store}", "postgresql+psycopg://monitor@127.0.0.1:{closed}/monitor"),
         ("cannot reach PostgreSQL at 127.0.0.1:{closed}", "connect_timeout_s = 2")),
    Case("database-never-answers", GOOD.replace("{store}", "postgresql+psycopg://monitor@127.0.0.1:{silent}/monitor"),
         ("cannot reach PostgreSQL at 127.0.0.1:{silent}",)),
    Case("database-refuses-the-web-role",
         GOOD.replace("{store}", "postgresql+psycopg://monitor@127.0.0.1:{closed}/monitor"),
         ("cannot reach PostgreSQL at 127.0.0.1:{closed}",), command=("web",)),
    Case("database-refuses-the-scheduler",
         GOOD.replace("{store}", "postgresql+psycopg://monitor@127.0.0.1:{closed}/monitor"),
         ("cannot reach PostgreSQL at 127.0.0.1:{closed}",), command=("scheduler",)),
]


@pytest.fixture(scope="module")
def services():
    """A port nothing listens on, and one that accepts connections but never says a word."""
    closed = free_port()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the kernel's backlog and are never read
    yield {"closed": closed, "silent": silent.getsockname()[1]}
    silent.close()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_start_is_exit_status_2_naming_the_problem_in_bounded_time(case, services, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"these are not weights\n" * 10)
    values = {"store": f"sqlite:///{tmp_path / 'monitor.db'}", "broker": "127.0.0.1:{closed}",
              "weights": str(garbage), "missing": str(tmp_path / "absent.pt")}
    text = case.config
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    for name, port in services.items():
        text = text.replace("{" + name + "}", str(port))
    config = tmp_path / "monitor.toml"
    config.write_text(text)
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MONITOR_")}
    environ.update(case.environ)
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-m", "monitor.cli", *case.command, "--config", str(config)],
                             cwd=tmp_path, env={**environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=120)
    elapsed = time.monotonic() - started
    output = process.stderr + process.stdout
    assert process.returncode == 2, output[-3000:]
    for expected in case.expected:
        for name, port in services.items():
            expected = expected.replace("{" + name + "}", str(port))
        assert expected in process.stderr, f"{expected!r} not in:\n{process.stderr[-3000:]}"
    assert "Traceback" not in output
    if case.secret:
        assert case.secret not in output
    assert elapsed < case.bound_s, f"{elapsed:.1f} s before the error"
