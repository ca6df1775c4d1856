"""Shared fixtures: the tiny models tests load by name, built once per session into the model cache."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from rlcore.models.build import build_model  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tiny_models():
    """Built once, as an explicit step (as an algorithm's driver does before it starts its actors)."""
    return {name: build_model(name) for name in ("tiny:arithmetic", "tiny:calendar")}
