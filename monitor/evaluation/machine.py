"""What a benchmark ran on, written next to its figures (every benchmark of the project uses it).

torch is imported only by `describe`, so the store and threshold benchmarks can name the CPU
without loading it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: "torch.device | None" = None) -> dict:
    """CPU model, cores, torch version, the device used and its name, and when."""
    import torch

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
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_line(info: dict) -> str:
    """One Markdown line for a report's header."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    load = info.get("load_average_1_5_15_min")
    busy = f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) when it ended" if load else ""
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, torch uses {info['torch_threads']} threads){gpu}; "
        f"torch {info['torch']}, Python {info['python']}; device `{info['device']}`; {info['date']}{busy}"
    )
