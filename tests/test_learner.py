"""LearnerWorker, ReferenceWorker and CriticWorker on the tiny arithmetic model, under one local Ray instance.

Groups are created before they are used so that their actors start in parallel
(each actor imports torch, transformers and DeepSpeed: ~10 s on 2 cores).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial

import pytest
import ray
import torch

from actors.critic import CriticWorker
from actors.learner import LearnerWorker
from actors.reference import ReferenceWorker
from algorithms import ppo
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


@pytest.fixture(scope="module")
def ppo_batch(batch) -> Batch:
    """`batch` with what PPO's policy loss reads: old log-probs (the model's plus noise, so that some ratios
    clip) and random advantages; its rows hold 2-4 response tokens, so a token mean is not a row mean."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logps = logprobs_of(load_model(MODEL).eval(), batch)
    noise = 0.3 * torch.randn(logps.shape, generator=generator)
    advantages = torch.randn(logps.shape, generator=generator)
    return replace(batch, logprobs=(logps + noise) * batch.response_mask, advantages=advantages * batch.response_mask)


def test_ppo_loss_update_does_not_depend_on_the_layout(ppo_batch):
    """One optimizer step with PPO's token-mean loss on 7 rows gives the same weights whether the rows run on
    1 rank in one micro-batch, 1 rank x 4 accumulated (2 + 2 + 2 + 1 rows), 2 ranks x 2 (4 + 3 rows) or 4 ranks
    x 1; and under ZeRO-3, on 2 ranks with micro-batches of 3 (4 + 3 rows: 2 micro-batches on one rank, 1 on
    the other, which runs a weightless one to keep ZeRO-3's collectives in step) as on 1 rank. The control,
    1 x 4 with each micro-batch's token mean weighted by its rows (what a per-micro-batch mean does), moves
    the weights differently.

    Tolerance (fp32, lr = 1e-3, clipping at norm 1): max |difference| < 2e-5 (2 % of lr) and fewer than 1 in
    10^4 elements above 1e-7. AdamW's first step moves an element whose gradient nearly cancels by
    lr * g / (|g| + eps), amplifying a ~1e-9 summation-order difference (lr/eps = 1e5). Measured: max 2.5e-6
    to 6.2e-6 for the ZeRO-0 layouts and 1.1e-5 for ZeRO-3 on 2 ranks against 1 rank, ~80 of 1.1M elements
    above 1e-7 for each; ZeRO-3 against ZeRO-0 differs by 2.3e-5 on 1 rank alone (its own summation order),
    hence the ZeRO-3 reference.
    """
    objective = partial(ppo.policy_objective, clip_eps=0.2, entropy_coef=0.0)
    groups = {
        "one_micro_batch": learners(1, lr=1e-3, micro_batch_size=8),
        "1x4_accumulated": learners(1, lr=1e-3, micro_batch_size=8, grad_accumulation=4),
        "2x2": learners(2, lr=1e-3, micro_batch_size=2),
        "4x1": learners(4, lr=1e-3, micro_batch_size=2),
        "control_1x4_rows": learners(1, lr=1e-3, micro_batch_size=8, grad_accumulation=4),
        "zero3_1_rank": learners(1, lr=1e-3, micro_batch_size=8, zero_stage=3),
        "zero3_2_ranks_odd": learners(2, lr=1e-3, micro_batch_size=3, zero_stage=3),
    }
    rows = ppo_batch.select(list(range(7)))
    try:
        start = groups["one_micro_batch"].run(LearnerWorker.weights)[0].tensors
        stats, after = {}, {}
        for name, group in groups.items():
            mean_over = "rows" if name.startswith("control") else "tokens"
            stats[name] = gather(group.shard(LearnerWorker.train_step, rows, objective, mean_over=mean_over))
            after[name] = group.run(LearnerWorker.weights)[0].tensors
    finally:
        for group in groups.values():
            group.kill()

    assert stats["one_micro_batch"][0]["clip_frac"] > 0  # the noise makes some ratios clip
    largest_update = max((after["one_micro_batch"][k] - start[k]).abs().max().item() for k in start)
    assert largest_update > 5e-4  # the step did move the weights

    def compare(name: str, reference: str) -> torch.Tensor:
        differences = torch.cat([(after[name][k] - after[reference][k]).abs().flatten() for k in start])
        print(f"{name}: max |weight difference| vs {reference} {differences.max():.2e}, "
              f"{int((differences > 1e-7).sum())} of {differences.numel()} elements above 1e-7")
        return differences

    for name, reference in [("1x4_accumulated", "one_micro_batch"), ("2x2", "one_micro_batch"),
                            ("4x1", "one_micro_batch"), ("zero3_2_ranks_odd", "zero3_1_rank")]:
        for rank_stats in stats[name]:  # every rank reports the step's global means and gradient norm
            assert rank_stats["loss"] == pytest.approx(stats[reference][0]["loss"], rel=1e-5, abs=1e-7), name
            assert rank_stats["grad_norm"] == pytest.approx(stats[reference][0]["grad_norm"], rel=1e-5), name
        differences = compare(name, reference)
        assert differences.max() < 2e-5, name
        assert (differences > 1e-7).float().mean() < 1e-4, name
    assert compare("control_1x4_rows", "one_micro_batch").max() > 1e-4


def peak_rss_mb(group: ActorGroup) -> float:
    return group.usage()[0]["peak_rss_mb"]


def test_micro_batch_size_bounds_learner_memory():
    """Peak learner memory does not grow with the batch at a fixed micro_batch_size: a PPO step on 64 rows of
    240 tokens in micro-batches of 4 peaks where a step on 4 rows does, while the control, the same 64 rows
    in one micro-batch, peaks far above (its activations and [64, 224, vocab] logits are alive at once)."""
    generator = torch.Generator().manual_seed(0)
    vocab = load_model(MODEL).config.vocab_size

    def long_batch(rows: int) -> Batch:
        prompts = torch.randint(3, vocab, (rows, 16), generator=generator).tolist()
        responses = torch.randint(3, vocab, (rows, 224), generator=generator).tolist()
        batch = make_batch(prompts, responses, pad_token_id=0)
        noise = torch.randn(batch.response_mask.shape, generator=generator)
        return replace(batch, logprobs=noise - 6.0, advantages=noise)

    objective = partial(ppo.policy_objective, clip_eps=0.2, entropy_coef=0.0)
    bounded, control = learners(1, micro_batch_size=4), learners(1, micro_batch_size=64)
    try:
        small, large = long_batch(4), long_batch(64)
        peaks = {}
        for name, group in (("bounded", bounded), ("control", control)):
            group.run(LearnerWorker.train_step, small, objective, mean_over="tokens")
            peaks[name, 4] = peak_rss_mb(group)
            group.run(LearnerWorker.train_step, large, objective, mean_over="tokens")
            peaks[name, 64] = peak_rss_mb(group)
    finally:
        bounded.kill()
        control.kill()
    growth = {name: peaks[name, 64] - peaks[name, 4] for name in ("bounded", "control")}
    print(f"peak RSS (MiB) {peaks}; growth from 4 to 64 rows {growth}")
    assert growth["control"] > 300, growth  # the large batch in one piece costs hundreds of MiB
    assert growth["bounded"] < 0.1 * growth["control"], growth


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
