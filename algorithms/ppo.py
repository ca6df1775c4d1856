"""PPO baseline (InstructGPT-style RLHF; Ouyang et al. 2022, Schulman et al. 2017) as a topology of Ray actors.

Four models: the policy (a DeepSpeed learner), a critic (value head on the
policy's backbone), a frozen reference and a reward (here the task verifier,
any `RewardConfig.kind` plugs in), plus the vLLM rollout engines that sample
with the policy's latest weights.

    for each step:
        generate    n responses per prompt with the current policy      (rollout workers)
        reward      score each response                                 (reward workers)
        reference   log π_ref of every response token                   (reference)
        values      V(s_t) before every response token                  (critic)
        advantages  r_t = −β·KL_t (+ score on the last token); GAE(γ, λ); whitened
        update      PPO epochs over minibatches: clipped policy loss (learner), clipped value loss (critic)
        sync        learner rank 0 → every rollout worker, in place

Departures from the paper:
- The old log-probs π_old are the rollout engine's own log-probs of the
  sampled tokens (vLLM; equal to the learner's within ~1e-5 in fp32), not a
  second learner forward pass.
- No pretraining-mix term (PPO-ptx); rewards are exact verifiers on a
  synthetic task, so there is no reward-model normalisation either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from actors.critic import CriticWorker
from actors.driver import export_policy, generate, greedy_accuracy, push_weights, usage_metrics
from actors.learner import LearnerWorker
from actors.reference import ReferenceWorker
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core import checkpoint, losses
from rlcore.core.batch import Batch
from rlcore.core.config import (
    ConfigError,
    CriticConfig,
    LearnerConfig,
    ModelConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    TaskConfig,
    TrackingConfig,
    check_choice,
    check_range,
    to_dict,
)
from rlcore.core.tracking import PhaseTimer, Tracker, new_run_dir
from rlcore.data.tasks import get_task
from rlcore.models.build import build_models
from rlcore.models.loading import response_logits, response_values, token_logprobs
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather, with_retries


@dataclass
class Config:
    """PPO: one nested config per role, then the algorithm's own settings."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(path="sft:arithmetic"))
    """The policy; `sft:<task>` is the cached SFT warm start."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Where prompts (and the rule reward) come from."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engines and training-time sampling."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward workers."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Frozen reference for the KL penalty."""
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(lr=5e-4))
    """Value model learner."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Policy learner ranks."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run folder and wandb."""
    steps: int = 40
    """PPO iterations (generate → update → sync)."""
    prompts_per_step: int = 64
    """Prompts sampled per iteration (each gets rollout.n_samples responses)."""
    ppo_epochs: int = 1
    """Passes over each iteration's samples."""
    minibatches: int = 2
    """Optimizer steps per epoch (the samples are split into this many minibatches)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """Policy ratio clip ε."""
    value_clip_eps: float = 0.2
    """Value clip ε."""
    kl_coef: float = 0.01
    """β of the per-token KL penalty to the reference (initial value if adaptive)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator: k1, k2 or k3."""
    kl_target: float = 0.0
    """> 0 turns on the adaptive KL controller with this target."""
    kl_horizon: int = 10_000
    """Adaptive KL controller horizon."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    whiten_advantages: bool = True
    """Normalise advantages over the batch."""
    eval_every: int = 5
    """Held-out greedy accuracy every this many steps (and before the first and after the last)."""
    seed: int = 0
    """Seed of sampling and minibatch shuffling (each step's seeds derive from it and the step number)."""
    resume: str = ""
    """A run folder to continue from its latest checkpoint (same config otherwise)."""

    def __post_init__(self) -> None:
        check_choice("kl_estimator", self.kl_estimator, sorted(losses.KL_ESTIMATORS))
        check_range("steps", self.steps, 1)
        check_range("prompts_per_step", self.prompts_per_step, 1)
        check_range("minibatches", self.minibatches, 1)
        check_range("ppo_epochs", self.ppo_epochs, 1)
        for role in ("rollout", "reward", "reference", "critic", "learner"):
            if getattr(self, role).num_workers < 1:
                raise ConfigError(f"{role}.num_workers: PPO needs at least one {role} worker")


@dataclass
class Topology:
    rollout_workers: ActorGroup[RolloutWorker]
    reward_workers: ActorGroup[RewardWorker]
    reference: ActorGroup[ReferenceWorker]
    critic: ActorGroup[CriticWorker]
    learner: ActorGroup[LearnerWorker]

    def kill(self) -> None:
        for group in (self.rollout_workers, self.reward_workers, self.reference, self.critic, self.learner):
            group.kill()

    def roles(self) -> dict[str, ActorGroup]:
        """The groups by role name, for `usage_metrics`."""
        return {"rollout": self.rollout_workers, "reward": self.reward_workers, "reference": self.reference,
                "critic": self.critic, "learner": self.learner}


def build_topology(config: Config) -> Topology:
    """Five groups, each sized and placed by its own role config."""
    policy = config.model.path
    return Topology(
        rollout_workers=ActorGroup.from_config(
            RolloutWorker, config.rollout, policy, config.rollout, dtype=config.model.dtype,
            enable_lora=config.model.lora_rank > 0, max_lora_rank=max(config.model.lora_rank, 1)),
        reward_workers=ActorGroup.from_config(RewardWorker, config.reward, config.reward, config.task, policy),
        reference=ActorGroup.from_config(
            ReferenceWorker, config.reference, config.reference.path or policy, config.model.dtype,
            config.reference.threads),
        critic=ActorGroup.from_config(
            CriticWorker, config.critic, policy, config.model, config.critic, distributed=True, seed=config.seed),
        learner=ActorGroup.from_config(
            LearnerWorker, config.learner, policy, config.model, config.learner, distributed=True,
            seed=config.seed),
    )


# ---------------------------------------------------------------------------- objectives (run inside learners)


def policy_objective(model, batch: Batch, clip_eps: float, entropy_coef: float):
    """Clipped surrogate (Schulman et al. 2017, eq. 7) minus an optional entropy bonus."""
    logits = response_logits(model, batch)
    logp = token_logprobs(logits, batch)
    loss, stats = losses.ppo_policy_loss(logp, batch.logprobs, batch.advantages, batch.response_mask, clip_eps)
    entropy = losses.masked_mean(losses.entropy_from_logits(logits.detach()), batch.response_mask)
    if entropy_coef:
        entropy = losses.masked_mean(losses.entropy_from_logits(logits), batch.response_mask)
        loss = loss - entropy_coef * entropy
    return loss, {**stats, "entropy": entropy.detach()}


def value_objective(model, batch: Batch, clip_eps: float):
    """Clipped value loss against the GAE returns."""
    values = response_values(model, batch)
    return losses.ppo_value_loss(values, batch.values, batch.returns, batch.response_mask, clip_eps)


# ---------------------------------------------------------------------------- the loop


def train(config: Config) -> dict:
    build_models(config.model.path, config.reference.path, config.critic.path, config.reward.path)
    init_ray()
    task = get_task(config.task.name, seed=config.task.seed)
    train_prompts = [e.prompt for e in task.examples("train", config.steps * config.prompts_per_step)]
    eval_prompts = [e.prompt for e in task.examples("heldout", config.task.eval_size)]
    run_dir = Path(config.resume) if config.resume else new_run_dir(
        config.tracking.run_dir, config.tracking.run_name, "ppo")
    kl_controller = (losses.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                     if config.kl_target > 0 else losses.FixedKLController(config.kl_coef))
    timer = PhaseTimer()
    start = time.time()
    topology = build_topology(config)
    resync = partial(push_weights, topology.learner, topology.rollout_workers)
    retries = config.rollout.max_restarts
    try:
        first_step, first_accuracy = 1, None
        if config.resume:
            folder, state = checkpoint.latest(run_dir)
            gather(topology.learner.map(LearnerWorker.load, str(folder / "policy")))
            gather(topology.critic.map(CriticWorker.load, str(folder / "critic")))
            resync()
            kl_controller.value, first_step, first_accuracy = state["kl_coef"], state["step"] + 1, state["accuracy0"]
            checkpoint.truncate_metrics(run_dir, state["step"])
        tracker = Tracker(run_dir, to_dict(config), config.tracking.wandb, config.tracking.wandb_mode,
                          config.tracking.project)
        if first_accuracy is None:
            with timer.phase("eval"):
                first_accuracy = greedy_accuracy(topology.rollout_workers, task, eval_prompts,
                                                 config.rollout.max_new_tokens)
            tracker.log({"heldout_accuracy": first_accuracy, **timer.pop(), **usage_metrics(topology.roles())}, step=0)
        accuracy = first_accuracy
        progress = tqdm(range(first_step, config.steps + 1), desc="ppo", unit="step")
        for step in progress:
            prompts = train_prompts[(step - 1) * config.prompts_per_step : step * config.prompts_per_step]
            step_seed = config.seed * 1_000_003 + step  # samples and minibatches depend on the step alone
            sampling = replace(Sampling.from_config(config.rollout), seed=step_seed)
            with timer.phase("generate"):
                batch = with_retries(lambda: generate(topology.rollout_workers, prompts, sampling),
                                     retries, "generate", resync)
            with timer.phase("reward"):
                scores = torch.cat([s.rewards for s in with_retries(
                    lambda: gather(topology.reward_workers.shard(RewardWorker.score, batch)), retries, "reward")])
            with timer.phase("reference"):
                batch.ref_logprobs = torch.cat(with_retries(
                    lambda: gather(topology.reference.shard(ReferenceWorker.logprobs, batch)), retries, "reference"))
            with timer.phase("values"):
                batch.values = torch.cat(gather(topology.critic.shard(CriticWorker.values, batch)))
            with timer.phase("advantages"):
                batch.rewards = scores
                token_rewards = losses.kl_penalized_rewards(
                    scores, batch.logprobs, batch.ref_logprobs, batch.response_mask, kl_controller.value,
                    config.kl_estimator)
                batch.advantages, batch.returns = losses.gae(
                    token_rewards, batch.values, batch.response_mask, config.gamma, config.lam)
                if config.whiten_advantages:
                    batch.advantages = losses.masked_whiten(batch.advantages, batch.response_mask)
                kl = losses.masked_mean(losses.kl_k1(batch.logprobs, batch.ref_logprobs), batch.response_mask)
                kl_controller.update(float(kl), len(batch))
            with timer.phase("update"):
                policy_stats, value_stats = [], []
                generator = torch.Generator().manual_seed(step_seed)
                for _ in range(config.ppo_epochs):
                    for minibatch in batch.minibatches(-(-len(batch) // config.minibatches), generator):
                        policy_refs = topology.learner.shard(
                            LearnerWorker.train_step, minibatch,
                            partial(policy_objective, clip_eps=config.clip_eps, entropy_coef=config.entropy_coef))
                        value_refs = topology.critic.shard(
                            CriticWorker.train_step, minibatch,
                            partial(value_objective, clip_eps=config.value_clip_eps))
                        policy_stats += gather(policy_refs)
                        value_stats += gather(value_refs)
            with timer.phase("sync"):
                with_retries(resync, retries, "sync")
            metrics = {
                "reward": scores.mean().item(),
                "kl": float(kl),
                "kl_coef": kl_controller.value,
                "response_length": batch.response_mask.sum(1).mean().item(),
                "explained_variance": float(losses.explained_variance(batch.values, batch.returns,
                                                                      batch.response_mask)),
                **{f"policy/{k}": _mean(policy_stats, k) for k in policy_stats[0]},
                **{f"critic/{k}": _mean(value_stats, k) for k in value_stats[0]},
            }
            if step % config.eval_every == 0 or step == config.steps:
                with timer.phase("eval"):
                    accuracy = greedy_accuracy(topology.rollout_workers, task, eval_prompts,
                                               config.rollout.max_new_tokens)
                metrics["heldout_accuracy"] = accuracy
                metrics.update(usage_metrics(topology.roles()))  # actor-seconds spent to reach this accuracy
            every = config.tracking.checkpoint_every
            if (every and step % every == 0) or step == config.steps:
                with timer.phase("checkpoint"):
                    folder = checkpoint.checkpoint_dir(run_dir, step)
                    gather(topology.learner.map(LearnerWorker.save, str(folder / "policy"))
                           + topology.critic.map(CriticWorker.save, str(folder / "critic")))
                    export_policy(topology.learner, run_dir, step)
                    checkpoint.commit(run_dir, step, {"kl_coef": kl_controller.value, "accuracy0": first_accuracy,
                                                      "prompts_used": step * config.prompts_per_step})
            times = timer.pop()
            metrics["tokens_per_s"] = batch.response_mask.sum().item() / max(times.get("time/generate", 1e-9), 1e-9)
            tracker.log({**metrics, **times}, step=step)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{accuracy:.2f}", kl=f"{metrics['kl']:.3f}")
        model_path = export_policy(topology.learner, run_dir)
        final_usage = usage_metrics(topology.roles())
        tracker.log(final_usage, step=config.steps)
        tracker.close()
    finally:
        topology.kill()
    result = {"algorithm": "ppo", "run_dir": str(run_dir), "model_path": model_path, "steps": config.steps,
              "heldout_accuracy_before": first_accuracy, "heldout_accuracy_after": accuracy,
              "wall_seconds": round(time.time() - start, 1), **final_usage}
    print(f"PPO on {config.task.name}: held-out greedy accuracy {first_accuracy:.1%} -> {accuracy:.1%} "
          f"after {config.steps} steps; {result['wall_seconds']:.0f} s this run; metrics in {run_dir}/metrics.jsonl; "
          f"model in {model_path}")
    return result


def _mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)
