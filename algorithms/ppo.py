"""PPO baseline (InstructGPT-style RLHF; Ouyang et al. 2022, Schulman et al. 2017) as a topology of Ray actors.

Four models: the policy (a DeepSpeed learner), a critic (value head on the
policy's backbone), a frozen reference and a reward (a task's verifier, a
reference answer's match, a trained reward model, ...: any `RewardConfig.kind`),
plus the vLLM rollout engines that sample with the policy's latest weights.
Prompts come from the `data` section: a built-in task or your own file or
dataset (rlcore.data.sources).

    for each step:
        generate    n responses per prompt with the current policy      (rollout workers)
        score       at once: the reward of each response                (reward workers)
                             log π_ref of every response token          (reference)
                             V(s_t) before every response token         (critic)
        advantages  r_t = −β·KL_t (+ score on the last token); GAE(γ, λ); whitened
                    (or critic-free, `advantage`: grpo, rloo, reinforce_pp; then no critic is built)
        update      PPO epochs over minibatches: clipped policy loss (learner), clipped value loss (critic)
                    (async_rollout: one_step_off generates the next step's batch meanwhile, with these weights)
        sync        learner rank 0 → every rollout worker, in place, between generations

Departures from the paper:
- In fp32 the old log-probs π_old are the rollout engine's own log-probs of
  the sampled tokens (vLLM; equal to the learner's within ~1e-5), not a second
  learner forward pass; in bf16/fp16 they drift, and the learner recomputes
  them (`rollout.recompute_logprobs`). Every step logs the gap between the two
  (logprob_gap/abs and /kl: on the whole batch when recomputed, else on the
  first minibatch before its update).
- No pretraining-mix term (PPO-ptx), and no reward-model normalisation.
- Critic-free estimators (rlcore.core.losses) reuse the same loop and clipped loss: GRPO (Shao et al. 2024;
  `grpo_normalize_std: false` is Dr. GRPO) and RLOO take the outcome score minus β·Σ_t KL_t per response
  (the KL as a reward term, as OpenRLHF's RLOO does, not GRPO's KL loss term); REINFORCE++ (Hu 2025)
  whitens the KL-penalised reward-to-go over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import torch
from tqdm import tqdm

from actors.critic import CriticWorker
from actors.driver import (
    Generation,
    WeightSync,
    before_after,
    evaluate,
    learner_logprobs,
    load_train_eval,
    policy_servers,
    recomputes_logprobs,
    usage_metrics,
)
from actors.learner import LearnerWorker
from actors.reference import ReferenceWorker
from actors.reward import MODEL_KINDS, RewardWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core import losses
from rlcore.core.batch import Batch
from rlcore.core.config import (
    ConfigError,
    CriticConfig,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    TrackingConfig,
    check_choice,
    check_range,
)
from rlcore.data.sources import RowStream, task_name
from rlcore.models.build import build_models
from rlcore.models.loading import response_logits, response_values, token_logprobs
from rlcore.runtime.cluster import init_ray, role_threads
from rlcore.runtime.group import ActorGroup, gather, with_retries
from rlcore.runtime.run import Run


@dataclass
class Config:
    """PPO: one nested config per role, then the algorithm's own settings."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(path="sft:arithmetic"))
    """The policy; `sft:<task>` is the cached SFT warm start."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts (and reference answers) for training and evaluation."""
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
    """Normalise GAE advantages over the batch."""
    advantage: str = "gae"
    """Advantage estimator: gae (with the critic), or critic-free grpo, rloo, reinforce_pp (no critic built)."""
    grpo_normalize_std: bool = True
    """GRPO divides by the group's reward std; false = Dr. GRPO (mean-centred only)."""
    async_rollout: str = "off"
    """off: generate, then train; one_step_off: the rollout workers generate step k+1's batch while the
    learners train on step k (samples one update old; the PPO ratio uses the log-probs that generated them)."""
    eval_every: int = 5
    """Evaluate on data.eval (greedy accuracy, mean reward, samples) every this many steps, first and last."""
    seed: int = 0
    """Seed of sampling and minibatch shuffling (each step's seeds derive from it and the step number)."""
    resume: str = ""
    """A run folder to continue from its latest checkpoint (same config otherwise)."""

    def __post_init__(self) -> None:
        check_choice("kl_estimator", self.kl_estimator, sorted(losses.KL_ESTIMATORS))
        check_choice("advantage", self.advantage, losses.ADVANTAGE_ESTIMATORS)
        check_choice("async_rollout", self.async_rollout, ["off", "one_step_off"])
        if self.advantage in ("grpo", "rloo"):
            check_range("rollout.n_samples", self.rollout.n_samples, 2)  # a group baseline needs two samples
        if self.rollout.temperature != 1.0 or self.rollout.top_p < 1.0:
            raise ConfigError(
                f"rollout.temperature={self.rollout.temperature}, rollout.top_p={self.rollout.top_p}: PPO's ratio "
                "and KL use the log-probs of the sampled tokens under the untempered, untruncated policy, which "
                "is not the policy that sampled them; use temperature 1.0 and top_p 1.0")
        check_range("steps", self.steps, 1)
        check_range("prompts_per_step", self.prompts_per_step, 1)
        check_range("minibatches", self.minibatches, 1)
        check_range("ppo_epochs", self.ppo_epochs, 1)
        for role in ("rollout", "reward", "reference", "learner") + (("critic",) if self.uses_critic else ()):
            if getattr(self, role).num_workers < 1:
                raise ConfigError(f"{role}.num_workers: PPO needs at least one {role} worker")

    @property
    def uses_critic(self) -> bool:
        return self.advantage == "gae"


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
    critics = config.critic.num_workers if config.uses_critic else 0
    updating = config.learner.num_workers + critics  # policy and critic ranks update together
    scoring = (config.reference.num_workers + critics  # reward, reference and critic score a batch together
               + (config.reward.num_workers if config.reward.kind in MODEL_KINDS else 0))
    config = replace(config, rollout=role_threads(config.rollout), reward=role_threads(config.reward, scoring),
                     reference=role_threads(config.reference, scoring), critic=role_threads(config.critic, updating),
                     learner=role_threads(config.learner, updating))
    return Topology(
        rollout_workers=ActorGroup.from_config(
            RolloutWorker, config.rollout, policy, config.rollout, dtype=config.model.dtype,
            enable_lora=config.model.lora_rank > 0, max_lora_rank=max(config.model.lora_rank, 1),
            chat_template=config.data.apply_chat_template),
        reward_workers=ActorGroup.from_config(RewardWorker, config.reward, config.reward,
                                              task_name(config.data.train), policy, config.rollout,
                                              config.model.dtype),
        reference=ActorGroup.from_config(
            ReferenceWorker, config.reference, config.reference.path or policy, config.model.dtype,
            config.reference.threads, config.reference.micro_batch_size),
        critic=ActorGroup.from_config(
            CriticWorker, config.critic, policy, config.model, config.critic, distributed=True, seed=config.seed,
        ) if config.uses_critic else ActorGroup(CriticWorker, 0),
        learner=ActorGroup.from_config(
            LearnerWorker, config.learner, policy, config.model, config.learner, distributed=True,
            seed=config.seed),
    )


def score(topology: Topology, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rewards [B], reference log-probs [B, R] and, with a critic, values [B, R] of `batch`: the reward, reference
    and critic groups compute at the same time, each on its own shards."""
    rewards = topology.reward_workers.shard(RewardWorker.score, batch)
    reference = topology.reference.shard(ReferenceWorker.logprobs, batch)
    values = topology.critic.shard(CriticWorker.values, batch) if topology.critic.actors else []
    return (torch.cat([s.rewards for s in gather(rewards)]), torch.cat(gather(reference)),
            torch.cat(gather(values)) if values else None)


# ---------------------------------------------------------------------------- objectives (run inside learners)


def policy_objective(model, batch: Batch, clip_eps: float, entropy_coef: float):
    """Clipped surrogate (Schulman et al. 2017, eq. 7) minus an optional entropy bonus: a token mean (train with
    mean_over="tokens", so that every token of the step weighs the same, whatever micro-batch it lands in)."""
    logits = response_logits(model, batch)
    logp = token_logprobs(logits, batch)
    loss, stats = losses.ppo_policy_loss(logp, batch.logprobs, batch.advantages, batch.response_mask, clip_eps)
    if entropy_coef:
        entropy = losses.masked_mean(losses.entropy_from_logits(logits), batch.response_mask)
        loss = loss - entropy_coef * entropy
    else:  # only a metric: measured on a few rows, as the whole [B, R, vocab] entropy costs a log-softmax
        entropy = losses.masked_mean(losses.entropy_from_logits(logits[:8].detach()), batch.response_mask[:8])
    return loss, {**stats, "entropy": entropy.detach()}


def value_objective(model, batch: Batch, clip_eps: float):
    """Clipped value loss against the GAE returns: a token mean (train with mean_over="tokens")."""
    values = response_values(model, batch)
    return losses.ppo_value_loss(values, batch.values, batch.returns, batch.response_mask, clip_eps)


def estimate_advantages(batch: Batch, config: Config, kl_coef: float) -> None:
    """batch.advantages (and, for the critic, batch.returns) from batch.rewards by `config.advantage`."""
    mask = batch.response_mask
    if config.advantage == "reinforce_pp":
        batch.advantages, batch.returns = losses.reinforce_pp_advantages(
            batch.rewards, batch.logprobs, batch.ref_logprobs, mask, kl_coef, config.kl_estimator)
        return
    token_rewards = losses.kl_penalized_rewards(batch.rewards, batch.logprobs, batch.ref_logprobs, mask, kl_coef,
                                                config.kl_estimator)
    if config.advantage == "gae":
        batch.advantages, batch.returns = losses.gae(token_rewards, batch.values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            batch.advantages = losses.masked_whiten(batch.advantages, mask)
    elif config.advantage == "grpo":
        batch.advantages = losses.grpo_advantages(token_rewards.sum(-1), batch.group, mask, config.grpo_normalize_std)
    else:
        batch.advantages = losses.rloo_advantages(token_rewards.sum(-1), batch.group, mask)


# ---------------------------------------------------------------------------- the loop


def train(config: Config) -> dict:
    build_models(config.model.path, config.reference.path, config.critic.path, config.reward.path)
    init_ray()
    train_data, eval_data = load_train_eval(config.data, config.model.path, config.steps * config.prompts_per_step)
    prompts_of = RowStream(train_data.rows, config.data.seed, config.data.shuffle)
    run = Run(config, "ppo", config.resume)
    kl_controller = (losses.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                     if config.kl_target > 0 else losses.FixedKLController(config.kl_coef))
    topology = build_topology(config)
    resync = WeightSync(topology.learner, *policy_servers(topology.rollout_workers, topology.reward_workers,
                                                          config.reward), transport=config.rollout.weight_sync)
    retries = config.rollout.max_restarts
    max_staleness = 1 if config.async_rollout == "one_step_off" else 0
    recompute = recomputes_logprobs(config.rollout, config.model.dtype)
    ahead: dict[int, Generation] = {}  # one_step_off: the next step's generation, started before this step's update

    def step_seed(step: int) -> int:  # samples and minibatches depend on the step alone
        return config.seed * 1_000_003 + step

    def start_generation(step: int) -> Generation:
        rows = prompts_of.take(step, config.prompts_per_step)
        sampling = replace(Sampling.from_config(config.rollout), seed=step_seed(step))
        return Generation(topology.rollout_workers, [r["prompt"] for r in rows], sampling,
                          [r["answer"] for r in rows])

    def rollout(step: int, started: Generation | None) -> Batch:
        """Step `step`'s batch: the generation started a step early, else a new one. Weights older than
        allowed (an engine that restarted with its starting weights) are pushed again and the batch redone."""
        batch = (started or start_generation(step)).result()
        if resync.staleness(batch) > max_staleness:
            print(f"step {step}: samples from weights version {min(batch.info['version'])}, the learner is at "
                  f"{resync.version}; pushing the weights again and regenerating")
            resync()
            batch = start_generation(step).result()
        return batch

    def evaluation(step: int) -> dict:
        with run.timer.phase("eval"):
            metrics, samples = evaluate(topology.rollout_workers, topology.reward_workers, eval_data, config.reward,
                                        config.rollout.max_new_tokens, config.data.samples_logged)
        run.log_samples(samples, step)
        return {**metrics, **usage_metrics(topology.roles())}  # actor-seconds spent to reach this accuracy

    try:
        state = run.restore(policy=topology.learner, critic=topology.critic)
        if state:
            resync()
            kl_controller.value, first = state["kl_coef"], state["first_eval"]
        else:
            first = evaluation(0)
            run.log({**first, "data/skipped": sum(train_data.skipped.values())}, step=0)
        last = first
        progress = tqdm(range(state["step"] + 1 if state else 1, config.steps + 1), desc="ppo", unit="step")
        for step in progress:
            with run.timer.phase("generate"):
                batch = with_retries(lambda: rollout(step, ahead.pop(step, None)), retries, "generate", resync)
            staleness = resync.staleness(batch)
            if recompute:  # the learner's log-probs, not the engine's, are the old policy's
                with run.timer.phase("old_logprobs"):
                    recomputed = learner_logprobs(topology.learner, batch)
                gap = losses.logprob_gap(batch.logprobs, recomputed, batch.response_mask)
                batch.logprobs = recomputed
            with run.timer.phase("score"):
                scores, batch.ref_logprobs, batch.values = with_retries(lambda: score(topology, batch), retries,
                                                                        "score")
            with run.timer.phase("advantages"):
                batch.rewards = scores
                estimate_advantages(batch, config, kl_controller.value)
                kl = losses.masked_mean(losses.kl_k1(batch.logprobs, batch.ref_logprobs), batch.response_mask)
                kl_controller.update(float(kl), len(batch))
            if config.async_rollout == "one_step_off" and step < config.steps:
                ahead[step + 1] = start_generation(step + 1)  # generates while the learners train on this step
            with run.timer.phase("update"):
                policy_stats, value_stats = [], []
                generator = torch.Generator().manual_seed(step_seed(step))
                for _ in range(config.ppo_epochs):
                    for minibatch in batch.minibatches(-(-len(batch) // config.minibatches), generator):
                        policy_refs = topology.learner.shard(
                            LearnerWorker.train_step, minibatch,
                            partial(policy_objective, clip_eps=config.clip_eps, entropy_coef=config.entropy_coef),
                            mean_over="tokens")
                        value_refs = topology.critic.shard(
                            CriticWorker.train_step, minibatch,
                            partial(value_objective, clip_eps=config.value_clip_eps),
                            mean_over="tokens") if config.uses_critic else []
                        policy_stats += gather(policy_refs)
                        value_stats += gather(value_refs)
            with run.timer.phase("sync"):
                with_retries(resync, retries, "sync")
            if not recompute:  # the first minibatch's ratio before its update is the engine-vs-learner gap
                gap = {"abs": policy_stats[0]["abs_log_ratio"], "kl": policy_stats[0]["approx_kl"]}
            metrics = {
                "reward": scores.mean().item(),
                "logprob_gap/abs": float(gap["abs"]),
                "logprob_gap/kl": float(gap["kl"]),
                "kl": float(kl),
                "kl_coef": kl_controller.value,
                "staleness": staleness,
                "response_length": batch.response_mask.sum(1).mean().item(),
                "data/passes": prompts_of.passes(step, config.prompts_per_step),
                "tokens_per_s": batch.response_mask.sum().item() / max(run.timer.seconds.get("generate", 0), 1e-9),
                **{f"policy/{k}": _mean(policy_stats, k) for k in policy_stats[0]},
                **{f"critic/{k}": _mean(value_stats, k) for k in (value_stats[0] if value_stats else [])},
            }
            if config.uses_critic:
                metrics["explained_variance"] = float(losses.explained_variance(batch.values, batch.returns,
                                                                                batch.response_mask))
            if step % config.eval_every == 0 or step == config.steps:
                last = evaluation(step)
                metrics.update(last)
            run.checkpoint(step, config.steps, {"kl_coef": kl_controller.value, "first_eval": first},
                           policy=topology.learner, critic=topology.critic)
            run.log(metrics, step)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", kl=f"{metrics['kl']:.3f}",
                                 acc=f"{last.get('heldout_accuracy', float('nan')):.2f}")
        final_usage = usage_metrics(topology.roles())
        model_path = run.finish(topology.learner, final_usage, config.steps)
    finally:
        run.close()
        topology.kill()
    result = {"algorithm": "ppo", "run_dir": str(run.run_dir), "model_path": model_path, "steps": config.steps,
              **{f"{k}_before": v for k, v in first.items() if k.startswith("heldout")},
              **{f"{k}_after": v for k, v in last.items() if k.startswith("heldout")},
              "wall_seconds": run.seconds, **final_usage}
    print(f"PPO ({config.advantage}) on {config.data.train}: {before_after(result)} after {config.steps} steps; "
          f"{run.seconds:.0f} s this run; metrics in {run.run_dir}/metrics.jsonl; model in {model_path}")
    return result


def _mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)
