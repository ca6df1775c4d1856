"""LearnerWorker, ReferenceWorker and CriticWorker on the tiny arithmetic model, under one local Ray instance.

Groups are created before they are used so that their actors start in parallel
(each actor imports torch, transformers and DeepSpeed: ~10 s on 2 cores).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import ray
import torch

from actors.critic import CriticWorker
from actors.learner import LearnerWorker
from actors.reference import ReferenceWorker
from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import CriticConfig, LearnerConfig, ModelConfig, ReferenceConfig
from rlcore.core.weights import merge_lora
from rlcore.models.loading import (
    encode_prompts,
    load_model,
    load_tokenizer,
    response_logits,
    response_values,
    token_logprobs,
)
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather

MODEL = "tiny:arithmetic"
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the objectives below travel by value


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    init_ray(num_cpus=8)  # logical CPUs: several half-CPU actors start side by side on 2 cores
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch() -> Batch:
    """8 arithmetic problems with their answers as responses (1-3 digits + eos, so rows differ in length)."""
    tokenizer = load_tokenizer(MODEL)
    problems = [(12, 7), (3, 4), (50, 50), (99, 1), (8, 9), (45, 23), (2, 2), (61, 38)]
    prompts = encode_prompts(tokenizer, [f"{a}+{b}=" for a, b in problems])
    responses = [
        tokenizer(str(a + b), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a, b in problems
    ]
    return make_batch(prompts, responses, tokenizer.pad_token_id)


def sft_objective(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood of the responses, summed over tokens, averaged over rows.

    A mean over rows (not over tokens) makes a split into equal row counts exact:
    mean over ranks of per-rank row means = the row mean of the whole batch.
    """
    logps = token_logprobs(response_logits(model, batch), batch)  # [B, R]
    return -logps.sum(-1).mean(), {"tokens": batch.response_mask.sum()}


def value_mse_objective(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    """0.5 * mean over response tokens of (V - return)^2."""
    values = response_values(model, batch)  # [B, R]
    error = (values - batch.returns) * batch.response_mask
    return 0.5 * error.pow(2).sum() / batch.response_mask.sum(), {"value_mean": values.sum() / batch.response_mask.sum()}


def logprobs_of(model, batch: Batch) -> torch.Tensor:
    return token_logprobs(response_logits(model, batch), batch)


def learners(num_workers: int = 1, model_config: ModelConfig | None = None, **config) -> ActorGroup[LearnerWorker]:
    learner_config = LearnerConfig(num_workers=num_workers, threads=1, **config)
    return ActorGroup.from_config(
        LearnerWorker,
        learner_config,
        MODEL,
        model_config or ModelConfig(),
        learner_config,
        distributed=True,
    )


def test_zero_stages_train_save_and_load(batch, tmp_path):
    """ZeRO 0, 2 and 3 lower an SFT loss, return whole weights, and resume from a checkpoint exactly."""
    groups = {stage: learners(lr=1e-3, micro_batch_size=8, zero_stage=stage) for stage in (0, 2, 3)}
    try:
        for stage, group in groups.items():
            losses = [group.run(LearnerWorker.train_step, batch, sft_objective)[0]["loss"] for _ in range(4)]
            assert losses[-1] < losses[0] - 1.0, (stage, losses)

            update = group.run(LearnerWorker.weights)[0]
            reference = load_model(MODEL).state_dict()
            assert update.version == 4 and not update.is_lora
            assert set(update.tensors) == set(reference), stage
            assert all(update.tensors[k].shape == v.shape for k, v in reference.items()), stage

            folder = str(tmp_path / f"stage{stage}")
            group.run(LearnerWorker.save, folder)
            after_save = group.run(LearnerWorker.train_step, batch, sft_objective)[0]
            assert group.run(LearnerWorker.load, folder) == [4]
            again = group.run(LearnerWorker.train_step, batch, sft_objective)[0]
            # optimizer state and weights restored: the 5th step repeats to the last bit
            assert again["loss"] == after_save["loss"] and again["grad_norm"] == after_save["grad_norm"], stage
    finally:
        for group in groups.values():
            group.kill()


def test_data_parallel_equals_accumulation_equals_one_big_batch(batch):
    """One optimizer step over 8 rows gives the same weights whether the rows go
    1 rank x 8, 2 ranks x 4 (DeepSpeed all-reduces the mean) or 1 rank x 4 x 2 accumulated.

    Tolerance (fp32, lr = 1e-3, clipping at norm 1): the grad norms agree to 1e-5 relative and
    the losses to 1e-6. Weights: measured max |difference| 1.9e-6, with 49 of 1.1M
    elements differing by more than 1e-7. Those are elements whose clipped gradient is below
    AdamW's eps (1e-8): the first step moves them by lr * g / (|g| + eps), which turns the
    ~1e-9 summation-order error of a nearly cancelling gradient into ~1e-6 (amplified by lr/eps).
    Asserted: max |difference| < 1e-5 (1 % of lr) and fewer than 1 in 10^4 elements above 1e-7.
    """
    one_rank = learners(1, lr=1e-3, micro_batch_size=8)
    two_ranks = learners(2, lr=1e-3, micro_batch_size=4)
    accumulated = learners(1, lr=1e-3, micro_batch_size=4, grad_accumulation=2)
    try:
        start = one_rank.run(LearnerWorker.weights)[0].tensors
        stats = {
            "one_rank": gather(one_rank.map(LearnerWorker.train_step, batch, sft_objective))[0],
            "two_ranks": gather(two_ranks.shard(LearnerWorker.train_step, batch, sft_objective)),
            "accumulated": gather(accumulated.map(LearnerWorker.train_step, batch, sft_objective))[0],
        }
        after = {
            "one_rank": one_rank.run(LearnerWorker.weights)[0].tensors,
            "two_ranks": two_ranks.run(LearnerWorker.weights)[0].tensors,
            "accumulated": accumulated.run(LearnerWorker.weights)[0].tensors,
        }
    finally:
        for group in (one_rank, two_ranks, accumulated):
            group.kill()

    # the global gradient norm is the same everywhere; every rank reports it
    norm = stats["one_rank"]["grad_norm"]
    assert [s["grad_norm"] for s in stats["two_ranks"]] == pytest.approx([norm, norm], rel=1e-5)
    assert stats["accumulated"]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    # the mean of the per-rank losses is the loss of the whole batch
    two_rank_loss = sum(s["loss"] for s in stats["two_ranks"]) / 2
    assert two_rank_loss == pytest.approx(stats["one_rank"]["loss"], rel=1e-6)

    largest_update = max((after["one_rank"][k] - start[k]).abs().max().item() for k in start)
    assert largest_update > 5e-4  # the step did move the weights
    for name in ("two_ranks", "accumulated"):
        differences = torch.cat([(after[name][k] - after["one_rank"][k]).abs().flatten() for k in start])
        print(f"{name}: max |weight difference| vs one rank {differences.max():.2e}, "
              f"{int((differences > 1e-7).sum())} of {differences.numel()} elements above 1e-7")
        assert differences.max() < 1e-5, name
        assert (differences > 1e-7).float().mean() < 1e-4, name


def test_lora_starts_at_base_model_and_ships_only_adapters(batch):
    """Zero-initialised B: the adapted model's logprobs are the base model's, exactly.
    After a step, base + scale * B @ A (what a rollout worker applies) reproduces the learner's logprobs."""
    lora = ModelConfig(lora_rank=4, lora_alpha=8.0, lora_target_modules=["q_proj", "v_proj"])
    group = learners(model_config=lora, lr=1e-2, micro_batch_size=8)
    try:
        base_model = load_model(MODEL).eval()
        with torch.no_grad():
            base = logprobs_of(base_model, batch)
        assert torch.equal(group.run(LearnerWorker.forward, batch, logprobs_of)[0], base)

        update = group.run(LearnerWorker.weights)[0]
        assert update.is_lora and update.lora_scale == 2.0
        assert len(update.tensors) == 2 * 2 * 4  # (A, B) x (q, v) x 4 layers
        assert all(".lora_A." in k or ".lora_B." in k for k in update.tensors)
        assert all(t.abs().sum() == 0 for k, t in update.tensors.items() if ".lora_B." in k)

        for _ in range(2):
            group.run(LearnerWorker.train_step, batch, sft_objective)
        update = group.run(LearnerWorker.weights)[0]
        adapted = group.run(LearnerWorker.forward, batch, logprobs_of)[0]
    finally:
        group.kill()
    state = base_model.state_dict()
    state.update(merge_lora(state, update))
    base_model.load_state_dict(state)
    with torch.no_grad():
        merged = logprobs_of(base_model, batch)
    assert (adapted - base).abs().max() > 1e-3  # the adapter learned something
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_reference_logprobs_equal_the_loaded_model(batch):
    group = ActorGroup.from_config(ReferenceWorker, ReferenceConfig(threads=1), MODEL, micro_batch_size=3)
    try:
        (reference,) = group.run(ReferenceWorker.logprobs, batch)
    finally:
        group.kill()
    with torch.no_grad():
        expected = logprobs_of(load_model(MODEL).eval(), batch)
    assert reference.shape == batch.response_mask.shape
    torch.testing.assert_close(reference, expected, atol=1e-6, rtol=0)


def test_critic_values_and_value_step(batch):
    """Values are [B, R] and zero on padding; a few steps of value MSE towards fixed returns lower it."""
    config = CriticConfig(threads=1, lr=3e-4, micro_batch_size=4, grad_accumulation=2)
    group = ActorGroup.from_config(CriticWorker, config, MODEL, ModelConfig(), config, distributed=True)
    try:
        values = group.run(CriticWorker.values, batch)[0]
        assert values.shape == batch.response_mask.shape
        assert torch.all(values[batch.response_mask == 0] == 0)
        assert values[batch.response_mask == 1].abs().sum() > 0

        targets = torch.linspace(-1, 1, batch.response_mask.shape[1]).expand_as(values) * batch.response_mask
        with_returns = replace(batch, returns=targets.contiguous())
        losses = [group.run(CriticWorker.train_step, with_returns, value_mse_objective)[0]["loss"] for _ in range(8)]
    finally:
        group.kill()
    assert losses[-1] < 0.5 * losses[0], losses


def poisoned_objective(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The SFT loss, made NaN on a micro-batch holding a row tagged "poison"."""
    loss, stats = sft_objective(model, batch)
    if "poison" in batch.info["tag"]:
        loss = loss * float("nan")
    return loss, stats


def test_non_finite_loss_skips_the_step_on_every_rank_then_stops(batch):
    """A NaN on rank 1 only: both ranks skip (weights untouched); more than max_skipped_steps in a row raise."""
    tagged = replace(batch, info={"tag": ["ok"] * (len(batch) - 1) + ["poison"]})
    group = learners(num_workers=2, lr=1e-3, micro_batch_size=4, max_skipped_steps=2)
    try:
        before = group.run(LearnerWorker.weights)[0].tensors
        results = gather(group.shard(LearnerWorker.train_step, tagged, poisoned_objective))
        assert [r["skipped"] for r in results] == [1.0, 1.0]
        after = group.run(LearnerWorker.weights)[0]
        assert after.version == 0 and all(torch.equal(before[k], after.tensors[k]) for k in before)
        # a clean step still trains and resets the count of consecutive skips
        clean = gather(group.shard(LearnerWorker.train_step, batch, sft_objective))
        assert [r["skipped"] for r in clean] == [0.0, 0.0] and clean[0]["version"] == 1
        for _ in range(2):
            gather(group.shard(LearnerWorker.train_step, tagged, poisoned_objective))
        with pytest.raises(ray.exceptions.RayTaskError, match="non-finite loss in 3 consecutive steps"):
            gather(group.shard(LearnerWorker.train_step, tagged, poisoned_objective))
    finally:
        group.kill()
