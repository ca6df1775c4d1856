"""RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback") on Ray actors.

One or two models instead of PPO's four: the policy (a DeepSpeed learner, plus
the vLLM rollout engines that sample it) and, in 2-model mode, a reward worker.
No critic, no reference, no importance ratio: responses from any source are
ranked by their scores, and the policy learns to order its length-normalised
log-likelihoods the same way while imitating the best response.

    for each round:
        sample   k responses y_i per query x from every source: the policy (temperature T; "diverse": one
                 more at each of several temperatures), the data ("chosen", "rejected"), a second model
        score    r_i = R(x, y_i)                                  (reward workers; 1-model mode: from the data)
        update   epochs over minibatches of whole queries:        (learner)
                 p_i = Σ_t log π(y_i,t) / |y_i|^α
                 L = w · Σ_{r_i<r_j} max(0, p_i − p_j) − mean_t log π(y_best,t)
        sync     learner → rollout workers: the next round samples the updated policy

Modes. 2-model: a reward worker scores every response. 1-model: `sources: [data]`
with `data_path` a file in the RRHF repository's format {"query", "responses",
"scores"}: nothing is sampled or scored (rollout workers, if any, only
evaluate); `rounds: 1` trains on the whole file, `rounds > 1` on
`prompts_per_round` of its rows a round, in order. Offline: `rounds: 1`,
sample once with the starting policy, train `epochs` passes. Online /
iterative (the paper's IP-n): `rounds > 1`, each round samples fresh queries
with the current policy.

Departures from the paper:
- Sampling: the paper uses beam search, diverse beam search and top-p; here
  "policy" is temperature sampling and "diverse" one sample at each of
  `diverse_temperatures` (0, greedy, stands in for beam search).
- Dataset responses ("chosen", "rejected") are the data's preference columns
  (data.chosen_key / rejected_key: e.g. Anthropic-HH's chosen / rejected); a
  built-in task gives its exact answer and a plausible wrong one. Text
  responses (data, a second model's) are tokenised with the policy's
  tokenizer and closed by eos.
- Identical responses to one query are kept once (`dedupe`), and queries whose
  responses all score the same are dropped (`drop_tied`): with 0/1 verifier
  rewards they have no ranked pair, and L_ft would imitate an arbitrary, maybe
  wrong, response. The paper's reward-model scores rarely tie.
- L_ft is a mean over the best response's tokens (rlcore.core.losses.rrhf_loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import torch
from tqdm import tqdm

from actors.driver import (
    WeightSync,
    before_after,
    evaluate,
    generate,
    load_train_eval,
    policy_servers,
    usage_metrics,
)
from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core import losses
from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import (
    ConfigError,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrackingConfig,
    check_choice,
    check_range,
)
from rlcore.data.sources import Data, DataError, RowStream, load_rows, task_name
from rlcore.models.build import build_models
from rlcore.models.loading import encode_prompts, load_tokenizer, response_logprobs
from rlcore.runtime.cluster import init_ray, role_threads
from rlcore.runtime.group import ActorGroup, gather, with_retries
from rlcore.runtime.run import Run

SOURCES = ("policy", "diverse", "chosen", "rejected", "second_model", "data")


@dataclass
class SecondModelConfig(RolloutConfig):
    """Rollout workers serving another model (the paper's responses from other LLMs)."""

    path: str = ""
    """The second model: a folder, a Hub name, tiny:<task> or sft:<task>."""


@dataclass
class Config:
    """RRHF: one nested config per role, then the algorithm's own settings."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(path="sft:arithmetic"))
    """The policy; `sft:<task>` is the cached SFT warm start."""
    data: DataConfig = field(default_factory=DataConfig)
    """Queries (with chosen / rejected responses for those sources) and the held-out evaluation."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Policy rollout engines; source "policy" samples rollout.n_samples per query at rollout.temperature."""
    second_model: SecondModelConfig = field(default_factory=SecondModelConfig)
    """Source "second_model": its own rollout workers and sampling."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward workers (2-model mode)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Policy learner ranks (their micro-batches hold whole queries)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run folder and wandb."""
    sources: list[str] = field(default_factory=lambda: ["policy", "diverse"])
    """Where the responses come from: policy, diverse, chosen, rejected, second_model; or data alone."""
    diverse_temperatures: list[float] = field(default_factory=lambda: [0.0, 1.5])
    """Source "diverse": one policy sample per query at each of these temperatures (0 = greedy)."""
    data_path: str = ""
    """Source "data": a JSONL / Parquet file of {"query", "responses", "scores"} rows; scores are the rewards.
    Queries are user turns, formatted with the policy's chat template like task prompts."""
    rounds: int = 40
    """Sample → score → update rounds; 1 = offline, more = online / iterative (fresh queries each round).
    1-model mode: 1 = the whole file at once, more = the file's rows in order, prompts_per_round a round."""
    prompts_per_round: int = 64
    """Queries per round (1-model mode with rounds: 1: every row of the file)."""
    epochs: int = 1
    """Passes over each round's responses."""
    queries_per_update: int = 64
    """Queries per optimizer step; a round's last step takes the remainder (a query is never split)."""
    rrhf_weight: float = 1.0
    """w, the weight of the ranking term (the paper: L = L_rank + L_ft)."""
    length_penalty: float = 1.0
    """α in p_i = Σ log π / |y_i|^α."""
    dedupe: bool = True
    """Keep one copy of identical responses to the same query."""
    drop_tied: bool = True
    """Drop queries whose responses all score the same."""
    eval_every: int = 5
    """Evaluate (data.eval, and the first training queries) every this many rounds, first and last."""
    seed: int = 0
    """Seed of sampling and the minibatch order (each round's seeds derive from it and the round number)."""
    resume: str = ""
    """A run folder to continue from its latest checkpoint (same config otherwise)."""

    def __post_init__(self) -> None:
        for index, source in enumerate(self.sources):
            check_choice(f"sources[{index}]", source, SOURCES)
        for key in ("rounds", "prompts_per_round", "epochs", "eval_every"):
            check_range(key, getattr(self, key), 1)
        check_range("queries_per_update", self.queries_per_update, self.learner.num_workers)
        if not self.sources:
            raise ConfigError("sources: name at least one source of responses")
        if "data" in self.sources and (self.sources != ["data"] or not self.data_path):
            raise ConfigError("sources: 'data' (1-model mode) must be the only source, with data_path set")
        if self.data_path and "data" not in self.sources:
            raise ConfigError("data_path: set, but 'data' is not in sources")
        if {"policy", "diverse"} & set(self.sources) and self.rollout.num_workers < 1:
            raise ConfigError("rollout.num_workers: sampling the policy needs at least one rollout worker")
        if "second_model" in self.sources and (not self.second_model.path or self.second_model.num_workers < 1):
            raise ConfigError("second_model: source 'second_model' needs second_model.path and num_workers >= 1")
        if "data" not in self.sources and self.reward.num_workers < 1:
            raise ConfigError("reward.num_workers: 2-model mode needs at least one reward worker")
        if self.learner.num_workers < 1:
            raise ConfigError("learner.num_workers: RRHF needs at least one learner rank")


@dataclass
class Topology:
    rollout_workers: ActorGroup[RolloutWorker]
    second_model: ActorGroup[RolloutWorker]
    reward_workers: ActorGroup[RewardWorker]
    learner: ActorGroup[LearnerWorker]

    def roles(self) -> dict[str, ActorGroup]:
        """The groups by role name (empty groups included), for `usage_metrics`."""
        return {"rollout": self.rollout_workers, "second_model": self.second_model,
                "reward": self.reward_workers, "learner": self.learner}

    def kill(self) -> None:
        for group in self.roles().values():
            group.kill()


def build_topology(config: Config) -> Topology:
    """Policy rollouts (also the evaluators), a second sampler and reward workers when used, the learner."""
    policy = config.model.path
    config = replace(config, rollout=role_threads(config.rollout), second_model=role_threads(config.second_model),
                     reward=role_threads(config.reward), learner=role_threads(config.learner))
    return Topology(
        rollout_workers=ActorGroup.from_config(
            RolloutWorker, config.rollout, policy, config.rollout, dtype=config.model.dtype,
            enable_lora=config.model.lora_rank > 0, max_lora_rank=max(config.model.lora_rank, 1),
            chat_template=config.data.apply_chat_template),
        second_model=ActorGroup.from_config(
            RolloutWorker, config.second_model, config.second_model.path, config.second_model,
            dtype=config.model.dtype, chat_template=config.data.apply_chat_template,
        ) if "second_model" in config.sources else ActorGroup(RolloutWorker, 0),
        reward_workers=ActorGroup.from_config(
            RewardWorker, config.reward, config.reward, task_name(config.data.train), policy, config.rollout,
            config.model.dtype,
        ) if "data" not in config.sources else ActorGroup(RewardWorker, 0),
        learner=ActorGroup.from_config(
            LearnerWorker, config.learner, policy, config.model, config.learner, distributed=True,
            seed=config.seed),
    )


# ---------------------------------------------------------------------------- objectives (run inside learners)


def rrhf_objective(model, batch: Batch, length_penalty: float, rrhf_weight: float):
    """RRHF loss (eq. 1–3) over the whole queries of `batch`: a mean over queries (train with
    mean_over="groups", so that micro-batches hold whole queries and every query of a step weighs the same)."""
    logp = response_logprobs(model, batch)
    loss, stats = losses.rrhf_loss(logp, batch.response_mask, batch.rewards, length_penalty, rrhf_weight,
                                   batch.group)
    scores = stats.pop("scores")
    return loss, {**stats, "rank_accuracy": rank_accuracy(scores, batch)}


def rank_accuracy(scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Share of ranked pairs (same query, r_i < r_j) that the policy orders the same way (p_i < p_j)."""
    ranked = (batch.group[:, None] == batch.group[None, :]) & (batch.rewards[:, None] < batch.rewards[None, :])
    agree = ranked & (scores[:, None] < scores[None, :])
    return agree.sum() / ranked.sum().clamp(min=1)


# ---------------------------------------------------------------------------- responses and queries


def text_responses(tokenizer, prompts: list, responses: list[str], groups: list[int], source: str,
                   chat_template: bool = True) -> Batch:
    """Responses given as text, tokenised with the policy's tokenizer and closed by eos."""
    return make_batch(
        prompt_ids=encode_prompts(tokenizer, prompts, chat_template),
        response_ids=[tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                      for r in responses],
        pad_token_id=tokenizer.pad_token_id,
        group=groups,
        info={"prompt": prompts, "response": responses, "source": [source] * len(prompts)},
    )


def sample_responses(topology: Topology, config: Config, tokenizer, rows: list[dict], seed: int = 0) -> Batch:
    """Every source's responses to the queries `rows`: group = the query's index, rows sorted by query, each
    carrying its query's reference answer when the rows have one. Sampling is seeded by `seed`."""
    prompts = [row["prompt"] for row in rows]
    queries = list(range(len(rows)))
    parts = []
    texts = partial(text_responses, tokenizer, chat_template=config.data.apply_chat_template)

    def sampled(batch: Batch, source: str) -> Batch:  # RRHF has no importance ratio: drop the behaviour logprobs
        info = {key: value for key, value in batch.info.items() if key != "version"}  # (and their weights' version)
        return replace(batch, logprobs=None, info={**info, "source": [source] * len(batch)})

    if "data" in config.sources:
        pairs = [(i, j) for i in queries for j in range(len(rows[i]["responses"]))]
        parts.append(texts([prompts[i] for i, _ in pairs], [rows[i]["responses"][j] for i, j in pairs],
                           [i for i, _ in pairs], "data"))
        parts[-1].rewards = torch.tensor([float(rows[i]["scores"][j]) for i, j in pairs])
    if "policy" in config.sources:
        sampling = replace(Sampling.from_config(config.rollout), seed=seed)
        parts.append(sampled(generate(topology.rollout_workers, prompts, sampling), "policy"))
    if "diverse" in config.sources:
        for index, temperature in enumerate(config.diverse_temperatures, start=1):
            sampling = Sampling(n=1, temperature=temperature, top_p=config.rollout.top_p,
                                max_new_tokens=config.rollout.max_new_tokens, seed=seed + 7919 * index)
            parts.append(sampled(generate(topology.rollout_workers, prompts, sampling), f"diverse_t{temperature:g}"))
    if "second_model" in config.sources:
        other = generate(topology.second_model, prompts, replace(Sampling.from_config(config.second_model), seed=seed))
        parts.append(texts(other.info["prompt"], other.info["response"], other.group.tolist(), "second_model"))
    for source in ("chosen", "rejected"):
        if source in config.sources:
            parts.append(texts(prompts, [row[source] for row in rows], queries, source))
    batch = Batch.cat(parts)
    batch = batch.select(torch.argsort(batch.group, stable=True))
    if all(row.get("answer") is not None for row in rows):
        batch.info["answer"] = [rows[g]["answer"] for g in batch.group.tolist()]
    return batch


def dedupe_responses(batch: Batch) -> Batch:
    """The first copy of every distinct response (token ids) to each query."""
    seen, keep = set(), []
    for row, (group, ids, mask) in enumerate(zip(batch.group.tolist(), batch.input_ids, batch.response_mask)):
        key = (group, tuple(ids[batch.prompt_length :][mask.bool()].tolist()))
        if key not in seen:
            seen.add(key)
            keep.append(row)
    return batch.select(keep)


def drop_tied_queries(batch: Batch) -> Batch:
    """The rows of the queries whose responses do not all score the same."""
    spread: dict[int, set[float]] = {}
    for group, reward in zip(batch.group.tolist(), batch.rewards.tolist()):
        spread.setdefault(group, set()).add(reward)
    return batch.select([row for row, group in enumerate(batch.group.tolist()) if len(spread[group]) > 1])


def split_queries(batch: Batch, num_chunks: int, generator: torch.Generator | None = None) -> list[Batch]:
    """`num_chunks` batches of whole queries, near-equal in queries (in a random order with `generator`)."""
    queries = batch.group.unique()
    if generator is not None:
        queries = queries[torch.randperm(len(queries), generator=generator)]
    return [batch.select(torch.isin(batch.group, chunk)) for chunk in queries.tensor_split(num_chunks)]


def update(learner: ActorGroup[LearnerWorker], batch: Batch, config: Config, generator: torch.Generator) -> list:
    """`epochs` passes over minibatches of whole queries, each split over the learner ranks by query; every rank's
    stats of every step. Nothing to do with fewer queries than ranks."""
    objective = partial(rrhf_objective, length_penalty=config.length_penalty, rrhf_weight=config.rrhf_weight)
    num_queries, stats = len(batch.group.unique()), []
    for _ in range(config.epochs if num_queries >= len(learner) else 0):
        for minibatch in split_queries(batch, max(1, num_queries // config.queries_per_update), generator):
            chunks = split_queries(minibatch, len(learner))
            stats += gather([actor.train_step.remote(chunk, objective, mean_over="groups")
                             for actor, chunk in zip(learner.actors, chunks)])
    return stats


def probe(learner: ActorGroup[LearnerWorker], batch: Batch, config: Config) -> dict[str, float]:
    """The RRHF loss of `batch` under the current weights, its rank accuracy and the mean p of the best and of
    the other responses (no update)."""
    logp = learner.run(LearnerWorker.forward, batch, response_logprobs)[0]
    loss, stats = losses.rrhf_loss(logp, batch.response_mask, batch.rewards, config.length_penalty,
                                   config.rrhf_weight, batch.group)
    best = batch.rewards == torch.stack([batch.rewards[batch.group == g].max() for g in batch.group])
    return {"loss": float(loss), "rank_accuracy": float(rank_accuracy(stats["scores"], batch)),
            "best_logp": stats["scores"][best].mean().item(), "other_logp": stats["scores"][~best].mean().item()}


# ---------------------------------------------------------------------------- the loop


def train(config: Config) -> dict:
    build_models(config.model.path, config.reward.path, config.second_model.path)
    init_ray()
    tokenizer = load_tokenizer(config.model.path)
    train_data, eval_data = load_train_eval(config.data, config.model.path, config.rounds * config.prompts_per_round)
    rows = train_data.rows
    if "data" in config.sources:
        rows = [{"prompt": row["query"], **row} for row in load_rows(config.data_path, "rankings").rows]
    check_columns(rows, config.sources, train_data.source)
    per_round = len(rows) if "data" in config.sources and config.rounds == 1 else config.prompts_per_round
    queries_of = RowStream(rows, config.data.seed, config.data.shuffle and "data" not in config.sources)
    train_eval = Data([{**row, "answer": row.get("answer")} for row in rows[: config.data.eval_size]
                       if eval_data.task is None or eval_data.task.is_well_formed(row["prompt"])],
                      "train", eval_data.task)
    run = Run(config, "rrhf", config.resume)
    topology = build_topology(config)
    retries = config.rollout.max_restarts
    resync = WeightSync(topology.learner, *policy_servers(topology.rollout_workers, topology.reward_workers,
                                                          config.reward), transport=config.rollout.weight_sync)

    def evaluation(step: int) -> dict[str, float]:
        """The held-out rows (accuracy, reward, samples) and the first training queries (accuracy); nothing
        without rollout workers."""
        if not len(topology.rollout_workers):
            return {}
        with run.timer.phase("eval"):
            metrics, samples = evaluate(topology.rollout_workers, topology.reward_workers, eval_data, config.reward,
                                        config.rollout.max_new_tokens, config.data.samples_logged)
            if train_eval.rows:
                metrics.update(evaluate(topology.rollout_workers, ActorGroup(RewardWorker, 0), train_eval,
                                        config.reward, config.rollout.max_new_tokens, prefix="train")[0])
        run.log_samples(samples, step)
        return metrics

    try:
        state = run.restore(policy=topology.learner)
        if state:
            if len(topology.rollout_workers):
                resync()
            first, updates, probe_before = state["first_eval"], state["updates"], state["probe_before"]
        else:
            first, updates, probe_before = evaluation(0), 0, {}
            run.log({**first, **usage_metrics(topology.roles())}, step=0)
        last, probe_batch, probe_after = first, None, {}
        progress = tqdm(range(state["step"] + 1 if state else 1, config.rounds + 1), desc="rrhf", unit="round")
        for round_ in progress:
            round_seed = config.seed * 1_000_003 + round_  # samples and minibatches depend on the round alone
            with run.timer.phase("sample"):
                candidates = with_retries(lambda: sample_responses(
                    topology, config, tokenizer, queries_of.take(round_, per_round), round_seed),
                    retries, "sample", resync)
            with run.timer.phase("score"):
                if candidates.rewards is None:
                    candidates.rewards = torch.cat([s.rewards for s in with_retries(
                        lambda: gather(topology.reward_workers.shard(RewardWorker.score, candidates)),
                        retries, "score")]).float()
            with run.timer.phase("filter"):
                batch = dedupe_responses(candidates) if config.dedupe else candidates
                batch = drop_tied_queries(batch) if config.drop_tied else batch
            num_queries = len(batch.group.unique())
            if not probe_before and num_queries:
                probe_batch, probe_before = batch, probe(topology.learner, batch, config)
            with run.timer.phase("update"):
                stats = update(topology.learner, batch, config, torch.Generator().manual_seed(round_seed))
                updates += len(stats) // len(topology.learner)
            if len(topology.rollout_workers):
                with run.timer.phase("sync"):
                    with_retries(resync, retries, "sync")
            metrics = {"reward": candidates.rewards.mean().item(), "queries": num_queries, "updates": updates,
                       "responses_per_query": len(batch) / max(1, num_queries),
                       **{f"reward/{source}": _mean_reward(candidates, source)
                          for source in dict.fromkeys(candidates.info["source"])},
                       **{key: _mean(stats, key) for key in (stats[0] if stats else {}) if key != "version"}}
            if round_ % config.eval_every == 0 or round_ == config.rounds:
                last = evaluation(round_)
                metrics.update({**last, **usage_metrics(topology.roles())})  # actor-seconds to reach it
            run.checkpoint(round_, config.rounds, {"first_eval": first, "updates": updates,
                                                    "probe_before": probe_before}, policy=topology.learner)
            run.log(metrics, round_)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", loss=f"{metrics.get('loss', 0):.3f}",
                                 acc=f"{last.get('heldout_accuracy', float('nan')):.2f}")
        if probe_batch is not None:
            probe_after = probe(topology.learner, probe_batch, config)
        final_usage = usage_metrics(topology.roles())
        model_path = run.finish(topology.learner)
    finally:
        run.close()
        topology.kill()
    result = {"algorithm": "rrhf", "run_dir": str(run.run_dir), "model_path": model_path, "rounds": config.rounds,
              "updates": updates,
              **{f"{k}_before": v for k, v in first.items()}, **{f"{k}_after": v for k, v in last.items()},
              **{f"first_round_{k}_before": v for k, v in probe_before.items()},
              **{f"first_round_{k}_after": v for k, v in probe_after.items()},
              "wall_seconds": run.seconds, **final_usage}
    print(f"RRHF on {train_data.source if 'data' not in config.sources else config.data_path}: {before_after(result)} "
          f"after {config.rounds} rounds ({updates} updates); {run.seconds:.0f} s; metrics in "
          f"{run.run_dir}/metrics.jsonl; model in {model_path}")
    return result


def check_columns(rows: list[dict], sources: list[str], source: str) -> None:
    """The dataset sources need their columns in every row: a clear error naming the first row without."""
    for column in ("chosen", "rejected"):
        if column in sources:
            missing = [i for i, row in enumerate(rows) if not row.get(column)]
            if missing:
                raise DataError(f"{source}: sources has {column!r} but row {missing[0]} (of {len(missing)}) has no "
                                f"{column} response (data.{column}_key names its column)")


def _mean_reward(batch: Batch, source: str) -> float:
    return batch.rewards[[i for i, s in enumerate(batch.info["source"]) if s == source]].mean().item()


def _mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)
