"""What a benchmark ran on, written next to its figures."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | None = None) -> dict:
    """CPU model, cores, torch version, the device used and its name, and when."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_line(info: dict) -> str:
    """One Markdown line for a report's header."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, torch uses {info['torch_threads']} threads){gpu}; "
        f"torch {info['torch']}, Python {info['python']}; device `{info['device']}`; {info['date']}"
    )
