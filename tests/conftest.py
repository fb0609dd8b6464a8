"""Shared fixtures: seeded torch on 2 threads for every test."""

import os

import pytest
import torch

# The reference oracle (moshi) compiles a few functions with torch.compile unless told not to: in tests that
# would only cost time and add a source of numerical difference.
os.environ.setdefault("NO_TORCH_COMPILE", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)
