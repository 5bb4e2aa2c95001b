"""Reading the deployment files under deploy/ as their tools do, for the tests that hold them to the code.

The compose file and the Kubernetes manifests are read as YAML, the overlays rendered by the real
`kubectl kustomize`, the Containerfile split into its instructions, and the environment files parsed
as Docker Compose and Kustomize read them. The code side is read from the code itself: the
`ood-monitor` argument parser, the settings loader, the probes' routes and the metrics a process
exports, so a renamed command, setting, route or metric breaks these tests.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("ingress", "keda-scaling")
OBSERVABILITY = DEPLOY / "observability"
IMAGE_NAME = "ood-monitor"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --- Containerfile ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    text: str


def containerfile_instructions(path: Path = CONTAINERFILE) -> list[Instruction]:
    """The instructions in order, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage (what the image is)."""
    starts = [index for index, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    return instructions[starts[-1]:]


def image_environment(instructions: list[Instruction]) -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE pairs, as the image carries them)."""
    environment: dict[str, str] = {}
    for instruction in final_stage(instructions):
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.text):
                key, _, value = pair.partition("=")
                environment[key] = value
    return environment


# --- environment files -----------------------------------------------------------------------------


def read_env_file(path: Path, *, strip_quotes: bool) -> dict[str, str]:
    """KEY=VALUE lines. Docker Compose takes a quoted value literally without its quotes
    (`strip_quotes`); Kustomize's secretGenerator keeps the text after '=' as it is."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"{path}: not KEY=VALUE: {line!r}"
        if strip_quotes and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# --- the code side ---------------------------------------------------------------------------------


def parse_command(argv: list[str]):
    """`ood-monitor ARGV` through the real argument parser; a command it refuses fails the test."""
    from monitor.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse exits on an unknown command or option
        raise AssertionError(f"`ood-monitor {' '.join(argv)}` is not a command the code accepts") from exit_


def configuration_problems(config_text: str, environment: dict[str, str], source: str) -> list[str]:
    """What the real settings loader says about this file with these MONITOR_* variables."""
    from monitor.settings import settings_with_problems

    return settings_with_problems(tomllib.loads(config_text), environment, source)[1]


def settings_of(config_text: str, environment: dict[str, str] | None = None):
    from monitor.settings import settings_from_mapping

    return settings_from_mapping(tomllib.loads(config_text), environment or {})


def probe_paths() -> set[str]:
    """The routes every role serves on [web] host:port for orchestrators and Prometheus."""
    from monitor.service.http import probes_router

    return {route.path for route in probes_router(None).routes}


def exported_metric_names() -> set[str]:
    """Every sample name a process's /metrics can carry, read from the Prometheus text of the real
    registries: a scoring worker's, the scheduler's, and the supervisor's own (which also carries its
    workers' families). Each `# TYPE` line names a family (a counter's with its _total), and a histogram's
    or summary's samples add their suffixes (a labelled family without children has no sample line)."""
    from prometheus_client import generate_latest

    from monitor.service.scheduler import JobMetrics
    from monitor.service.supervisor import Supervisor
    from monitor.settings import Settings
    from monitor.stream.operability import StreamMetrics

    supervisor = Supervisor(Settings(), workers=1, scheduler=False, web=False, install_signal_handlers=False)
    registries = [StreamMetrics().registry, JobMetrics().registry, supervisor.registry]
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    names = set()
    for registry in registries:
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def metric_names_in(expression: str) -> set[str]:
    """The ood-monitor metric names a PromQL expression reads (recording rules use ':' and are not)."""
    return set(re.findall(r"\bood_monitor_[a-z0-9_]+\b", expression))


# --- compose ---------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def at_defaults(text: str) -> str:
    """Compose's ${VAR:-default} interpolation with no variable set: the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def compose_path(relative: str) -> Path:
    """A path of the compose file (relative to its folder), with ${VAR:-default} at its default."""
    return (COMPOSE.parent / at_defaults(relative)).resolve()


def ood_monitor_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the ood-monitor image (the `x-ood-monitor` template's image)."""
    image = document["x-ood-monitor"]["image"]
    return {name: service for name, service in document["services"].items() if service.get("image") == image}


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """Its env files, then its `environment` (which wins, as in Docker Compose)."""
    environment: dict[str, str] = {}
    for env_file in service.get("env_file") or []:
        path = env_file["path"] if isinstance(env_file, dict) else env_file
        environment.update(read_env_file(compose_path(path), strip_quotes=True))
    environment.update({key: at_defaults(str(value)) for key, value in (service.get("environment") or {}).items()})
    return environment


def mounted_config(service: dict[str, Any], target: str) -> Path | None:
    """The host file a service mounts at `target`."""
    for volume in service.get("volumes") or []:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target and source.startswith("."):
            return compose_path(source)
    return None


def volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume or host path."""
    targets = {}
    for volume in service.get("volumes") or []:
        source, _, rest = volume.partition(":")
        targets[rest.split(":")[0]] = source
    return targets


# --- Kubernetes ------------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise AssertionError("kubectl (with its built-in Kustomize) is needed to render deploy/kubernetes; "
                             "install kubectl >= 1.27")
    return found


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: the manifests as Kubernetes would receive them."""
    result = subprocess.run([kubectl(), "kustomize", str(kustomization_dir)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {kustomization_dir} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_with_components(overlay: str, components: tuple[str, ...], workdir: Path) -> list[dict[str, Any]]:
    """An overlay with optional components switched on, as a user does by uncommenting them."""
    relative = Path(os.path.relpath(KUBERNETES, workdir))
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(relative / "overlays" / overlay)],
        "components": [str(relative / "components" / name) for name in components],
    }))
    return render(workdir)


@dataclass
class Rendered:
    documents: list[dict[str, Any]]
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self):
        for document in self.documents:
            self.by_kind.setdefault(document["kind"], []).append(document)

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.by_kind.get(kind, []) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workloads(self) -> Iterator[dict[str, Any]]:
        yield from self.by_kind.get("Deployment", [])
        yield from self.by_kind.get("Job", [])

    def config_text(self) -> str:
        (config_map,) = self.by_kind["ConfigMap"]
        return config_map["data"]["monitor.toml"]

    def secret_environment(self) -> dict[str, str]:
        (secret,) = self.by_kind["Secret"]
        return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def container_environment(container: dict[str, Any], rendered: Rendered) -> dict[str, str]:
    """envFrom Secrets, then env (which wins, as in Kubernetes)."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            secret = rendered.one("Secret", source["secretRef"]["name"])
            environment.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    environment.update({item["name"]: item["value"] for item in container.get("env") or []})
    return environment


def ood_monitor_commands(command: list[str] | None, args: list[str] | None) -> list[list[str]]:
    """The `ood-monitor ...` invocations of a container or service: its arguments under the image's
    entry point, or each one inside a shell command line (a shell variable stands in as 'VALUE')."""
    if command is None:
        return [list(args or [])]
    text = " ".join([*command, *(args or [])])
    invocations = []
    for segment in re.findall(r"ood-monitor\s+(.*?)(?:;|&&|\|\||\n|$)", text):
        words = shlex.split(segment)
        invocations.append(["VALUE" if "$" in word else word for word in words])
    return invocations
