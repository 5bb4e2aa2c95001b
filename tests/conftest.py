"""Shared fixtures. Service fixtures (PostgreSQL, brokers, browser) live beside the tests
that need them; everything they start, they stop."""

from __future__ import annotations

import os

import pytest

# Deterministic, quiet torch on the 2-core CI machines; CUDA is used when present.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
