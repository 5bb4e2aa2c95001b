"""`python tests/integration/crashing_decoder.py run --config FILE`: ood-monitor whose image decoder
crashes its process with SIGSEGV on a message whose value starts with b"CRASH", as a fault in a
native image library would. No input is known to crash the pinned decoders, so the fault is
injected here; the worker processes get it too, because multiprocessing's spawn imports this file
as their main module."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import monitor.stream.pipeline as pipeline  # noqa: E402

_decode_image = pipeline.decode_image


def crashing_decode_image(data, *args, **kwargs):
    if bytes(data[:5]) == b"CRASH":
        ctypes.string_at(0)  # reads address 0: SIGSEGV, the process dies at once
    return _decode_image(data, *args, **kwargs)


pipeline.decode_image = crashing_decode_image

if __name__ == "__main__":
    from monitor.cli import main

    sys.exit(main())
