"""The composition of the roles: which package may import which, and how the supervisor sums what
its children report."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from monitor.service.status import Retired, merge_families
from monitor.stream.operability import StreamMetrics

PACKAGE = Path(__file__).resolve().parents[2] / "monitor"


def _imports(package: str) -> dict[str, set[str]]:
    """module file -> the monitor.* modules it imports (at any depth: lazy imports count too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(PACKAGE.parent))] = {name for name in names if name.startswith("monitor.")}
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("stream", ("monitor.web", "monitor.jobs", "monitor.service")),
    ("jobs", ("monitor.stream", "monitor.web", "monitor.service")),
    ("web", ("monitor.stream", "monitor.jobs", "monitor.service")),
    ("outbound", ("monitor.stream", "monitor.jobs", "monitor.web", "monitor.service")),
])
def test_the_parts_below_the_composition_do_not_import_each_other(package, forbidden):
    # One composition place (monitor.service) wires stream, jobs and web; the Kafka producer and
    # the webhook that stream and jobs both publish with sit below them (monitor.outbound).
    offending = {module: sorted(name for name in names if name.startswith(forbidden))
                 for module, names in _imports(package).items()}
    assert not {module: names for module, names in offending.items() if names}


class _Batch:
    def __init__(self, images: int, flagged: int, rejected: int = 0):
        self.images = [None] * images
        self.items = [None] * (images + rejected)
        self.flagged = np.array([True] * flagged + [False] * (images - flagged))
        self.rejected = [type("R", (), {"reject_reason": "corrupt"})()] * rejected
        self.opened_at = 0.0
        self.score_seconds = 0.01
        self.policy = None


def _value(families, sample_name, **labels):
    for family in families:
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    raise KeyError(sample_name)


def test_worker_metrics_are_summed_and_a_replaced_worker_keeps_its_counts():
    first, second = StreamMetrics(), StreamMetrics()
    first.observe_batch(_Batch(8, 2, rejected=1), replays=0, now=1.0)
    second.observe_batch(_Batch(4, 0), replays=3, now=1.0)
    first.assigned_partitions.set(2)
    second.assigned_partitions.set(1)
    retired = Retired()
    merged = merge_families([list(first.registry.collect()), list(second.registry.collect())], retired)
    assert _value(merged, "ood_monitor_messages_total") == 13
    assert _value(merged, "ood_monitor_images_scored_total") == 12
    assert _value(merged, "ood_monitor_rejects_total", reason="corrupt") == 1
    assert _value(merged, "ood_monitor_replayed_messages_total") == 3
    assert _value(merged, "ood_monitor_batch_size_count") == 2
    assert _value(merged, "ood_monitor_batch_size_bucket", le="8.0") == 1  # the 4-message batch only
    assert _value(merged, "ood_monitor_assigned_partitions") == 3
    assert _value(merged, "ood_monitor_flagged_share") == pytest.approx((2 / 8 + 0) / 2)
    # The first worker dies; its replacement starts from zero: the totals never go down.
    retired.add(list(first.registry.collect()))
    replacement = StreamMetrics()
    replacement.observe_batch(_Batch(2, 1), replays=0, now=1.0)
    merged = merge_families([list(second.registry.collect()), list(replacement.registry.collect())], retired)
    assert _value(merged, "ood_monitor_messages_total") == 9 + 4 + 2
    assert _value(merged, "ood_monitor_images_flagged_total") == 3
    assert _value(merged, "ood_monitor_assigned_partitions") == 1  # gauges: live workers only
    assert not any(sample.name.endswith("_created") for family in merged for sample in family.samples)


@pytest.mark.parametrize("cores, torch_threads, expected", [
    (2, None, 2), (4, None, 4), (16, None, 8), (64, None, 8), (1, None, 1), (2, 1, 2), (16, 4, 4), (16, 2, 8),
    (3, 8, 1), (None, None, 1),
])
def test_default_workers_on_the_cpu_share_the_cores_by_torch_threads(monkeypatch, cores, torch_threads, expected):
    from monitor.service import supervisor
    from monitor.settings import settings_from_mapping

    monkeypatch.setattr(supervisor, "available_cores", lambda: max(1, cores or 1))
    model = {"device": "cpu"} if torch_threads is None else {"device": "cpu", "torch_threads": torch_threads}
    assert supervisor.auto_workers(settings_from_mapping({"model": model}, {})) == expected


def _machine_with_gpus(monkeypatch, count: int, visible: str | None = None):
    # No GPU here: torch and the driver's folder are made to report `count` (the rules read nothing else).
    import torch

    from monitor.service import supervisor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(supervisor, "NVIDIA_DRIVER_GPUS", Path("/") if count else Path("/nonexistent-nvidia"))
    monkeypatch.setattr(supervisor, "available_cores", lambda: 16)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return supervisor


def test_default_workers_are_two_per_gpu(monkeypatch):
    from monitor.settings import settings_from_mapping

    supervisor = _machine_with_gpus(monkeypatch, 1)
    assert supervisor.auto_workers(settings_from_mapping({"model": {"device": "auto"}}, {})) == 2
    assert supervisor.auto_workers(settings_from_mapping({"model": {"device": "cuda"}}, {})) == 2
    # A model pinned to the CPU shares the cores even on a machine with a GPU.
    assert supervisor.auto_workers(settings_from_mapping({"model": {"device": "cpu"}}, {})) == 8
    supervisor = _machine_with_gpus(monkeypatch, 4)
    assert supervisor.auto_workers(settings_from_mapping({"model": {"device": "auto"}}, {})) == 8


def test_workers_are_dealt_round_the_gpus(monkeypatch):
    from monitor.settings import settings_from_mapping

    cuda = settings_from_mapping({"model": {"device": "cuda"}}, {})
    supervisor = _machine_with_gpus(monkeypatch, 4)
    gpus = supervisor.visible_gpus(cuda)
    assert [supervisor.gpu_of_worker(gpus, index) for index in range(8)] == ["0", "1", "2", "3"] * 2
    # CUDA_VISIBLE_DEVICES already narrows what this process sees: the workers share those GPUs.
    supervisor = _machine_with_gpus(monkeypatch, 2, visible="GPU-aaa,GPU-bbb")
    gpus = supervisor.visible_gpus(cuda)
    assert [supervisor.gpu_of_worker(gpus, index) for index in range(3)] == ["GPU-aaa", "GPU-bbb", "GPU-aaa"]
    # One GPU, or none: each worker keeps the device as configured.
    supervisor = _machine_with_gpus(monkeypatch, 1)
    assert supervisor.gpu_of_worker(supervisor.visible_gpus(cuda), 1) is None
    supervisor = _machine_with_gpus(monkeypatch, 0)
    assert supervisor.visible_gpus(cuda) == [] and supervisor.visible_gpus(
        settings_from_mapping({"model": {"device": "auto"}}, {})) == []


def test_a_worker_given_a_gpu_sees_only_that_one(monkeypatch):
    from monitor.service.children import use_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    use_gpu(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    use_gpu("2")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", None),  # no limit: the CPUs the process may run on
    ("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("100000000 100000\n", None),
    ("garbage", None),
])
def test_available_cores_follow_the_containers_cpu_limit(tmp_path, cpu_max, expected):
    import os

    from monitor.service.supervisor import available_cores

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    runnable = len(os.sched_getaffinity(0))
    assert available_cores(path) == (runnable if expected is None else min(runnable, expected))
    assert available_cores(tmp_path / "absent") == runnable
