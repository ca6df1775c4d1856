"""Builds you can trust: the cache key follows the build code, and a build gives the same weights in the main
process and inside a Ray actor."""

import shutil
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rlcore.models import cache
from rlcore.models.build import build_model
from rlcore.models.loading import ModelNotBuilt, resolve_model
from rlcore.models.sft import SFTConfig, train_sft
from rlcore.runtime.cluster import init_ray

SHORT_SFT = SFTConfig(max_steps=6, eval_every=1000, eval_size=8, target_accuracy=1.0, batch_size=16)


def test_changing_the_build_code_changes_the_cache_key(tmp_path, monkeypatch):
    """A copy of the package: editing models/sft.py or data/tasks/arithmetic.py moves `sft:arithmetic` to a new
    folder; editing code that does not build it (rewards/judge.py) does not."""
    package = tmp_path / "rlcore"
    shutil.copytree(cache.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE", package)
    before = cache.sft_folder("arithmetic")
    (package / "rewards" / "judge.py").write_text((package / "rewards" / "judge.py").read_text() + "\n# edit\n")
    assert cache.sft_folder("arithmetic") == before
    seen = {before}
    for edited in ("models/sft.py", "data/tasks/arithmetic.py", "models/tiny.py", "core/training.py"):
        (package / edited).write_text((package / edited).read_text() + "\n# edit\n")
        seen.add(cache.sft_folder("arithmetic"))
    assert len(seen) == 5
    assert cache.sft_folder("calendar") != cache.sft_folder("arithmetic")


def test_loading_an_unbuilt_model_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RLCORE_CACHE", str(tmp_path))
    with pytest.raises(ModelNotBuilt, match="rlcore build sft:arithmetic"):
        resolve_model("sft:arithmetic")
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert build_model("some/local/folder") == "some/local/folder"


def test_a_build_is_bit_identical_in_the_main_process_and_in_a_ray_actor(tmp_path):
    build_model("tiny:arithmetic")
    here = train_sft(SHORT_SFT, tmp_path / "main").path
    init_ray(num_cpus=1)
    try:
        there = ray.get(ray.remote(num_cpus=1)(train_sft).remote(SHORT_SFT, str(tmp_path / "actor"))).path
    finally:
        ray.shutdown()
    a = load_file(str(Path(here) / "model.safetensors"))
    b = load_file(str(Path(there) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(Path(build_model("tiny:arithmetic")) / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
