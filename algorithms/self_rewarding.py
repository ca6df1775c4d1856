"""Iterative self-rewarding DPO (Yuan et al. 2024, "Self-Rewarding Language Models") as a topology of Ray actors.

One model is both the policy and its own judge. The seed model M0 is fine-tuned
on instruction data (IFT) and judge data (EFT); each iteration then builds AI
feedback with the current model and trains the next one on it with DPO, the
previous model being the reference:

    for t in 1..T:
        self-instruct  new prompts written from few-shot seed prompts; malformed, duplicate and
                       held-out ones are dropped                                          (rollout workers)
        candidates     N responses per new prompt (temperature, top-p)                    (rollout workers)
        judge          M_{t-1} scores every candidate with the judge prompt,
                       k samples parsed and averaged                                      (rollout workers)
        pairs          best vs worst candidate of each prompt; ties dropped
        dpo            DPO (sigmoid, β) or IPO on the pairs against M_{t-1}               (learner)
        sync           learner → rollout workers: M_t writes, answers and judges from now on
        evaluate       held-out greedy accuracy (verifier); judge quality against the verifier
                       (pairwise accuracy, top pick, exact match, Spearman, Kendall τ: the paper's Table 3)

Departures from the paper:
- Tasks are verifiable (rlcore.data.tasks) instead of open-ended instructions. EFT scores
  follow from the verifier (5 right, 0 wrong), and the judge is measured against the
  verifier on a fixed set: M0's sampled candidates for held-out prompts.
- Judge formats (`seed_model.template`): `rubric` is the paper's (JUDGE_RUBRIC, a
  justification then "Score: N"); `compact` is "{prompt}{response} score:" -> " 5";
  `reference` (the tiny config's) is reference-guided grading: the judge writes its own
  answer to the prompt and the response scores 5 if it equals it, else 0
  (rlcore.rewards.judge.reference_score). Measured on the tiny model: after 1500-3000 seed
  steps, a judge that must write the verdict itself stays near chance (55-58 % on
  right vs near-miss answers; it computes the answer but cannot compare two numbers
  digit by digit), while the reference judge reaches 71-83 %.
- Options beyond the paper, off by default: `nll_weight` adds an NLL term on the
  chosen responses (IRPO, Pang et al. 2024), `min_margin` drops pairs whose judge
  scores are close, `judge_replay` interleaves SFT steps on fresh judge (EFT)
  examples with the DPO steps, so that the judge keeps what the seed taught it
  while the policy moves (replay against forgetting, as in continual learning:
  Rolnick et al. 2019; Meta-Rewarding, Wu et al. 2024, trains the judge on
  judgements instead).
- Controls: `judge: verifier` pairs by the task's verifier (an upper bound on what
  any judge can give), `judge: random` by random scores (a lower bound). Either
  way the model's own judge is still measured at every evaluation.

What was measured on subset sum (launch/configs/self_rewarding_tiny.yaml; tables in the
README's self-rewarding section): the trace judge of M0 (3000 seed steps) ranks its own
samples with pairwise accuracy 0.62 and improves to 0.73 by M3 (judge replay); the
policy gains 2-3 points at M1 (66.6 % -> 69.5 %) and then stays flat, as it does with
the verifier as judge, while random judging loses 2 points. A judge trace of running
sums then "=target" copied the target instead of comparing (100 of 115 wrong answers
called right); the count-down trace fixed most of that. Three judge samples at T = 1
(the paper's) judged worse than one greedy judgement (pairwise 0.54 vs 0.56 then).

What was measured on the tiny arithmetic setup (self_rewarding_arithmetic_tiny.yaml:
M0 = 1000 seed steps from the SFT checkpoint, held-out accuracy 52 %) the model's own judgements give
pairs whose chosen answers are right more often than the rejected ones (43 % vs 23 %),
but held-out accuracy falls over the iterations (52 % -> 50 % -> 43 %). The same held
on a stronger M0 (75 %), with or without the NLL term or the margin filter. With the
verifier in place of the judge and nll_weight 1 it rises (75 % -> 84 % -> 87 %), so the
plumbing learns; pure DPO lowers greedy accuracy even on verifier pairs (75 % -> 67 %
in 18 steps). The reference judge is the policy answering again, so it cannot know
more than the policy; the paper's premise is a judge that can.

Judges tried for that and measured on M0 (512 held-out prompts, 4 candidates at
T = 0.7), as the accuracy of the chosen answer vs greedy on the same prompts:
reference judge (3 samples at T = 1) 36 % vs 49 %; a judge writing its answer
digits in reverse order (easier for small transformers, Lee et al. 2023) 34 % vs 42 %,
greedy 42 % vs 47 %; the majority of 16 samples beats greedy by 3 points at most.
A judge writing a column-by-column scratchpad learns more slowly than the direct
answer (62 % after 500 steps, while the direct answer reached 77 %). A path-finding
task where checking is local and answering needs lookahead (path-star graphs) was
learnt by neither the policy nor the verdict judge in 1750 steps of 1M parameters.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from tqdm import tqdm

from actors.driver import (
    WeightSync,
    generate,
    greedy_accuracy,
    learner_logprobs,
    recomputes_logprobs,
    usage_metrics,
)
from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker, Sampling
from algorithms.self_rewarding_seed import (
    JUDGE_TEMPLATES,
    MAX_SCORE,
    SeedConfig,
    best_vs_worst,
    eft_examples,
    judge_quality,
    judge_score,
    pair_minibatches,
    seed_checkpoint,
    self_instruct_prompt,
    verifier_score,
)
from rlcore.core import losses
from rlcore.core.batch import Batch
from rlcore.core.config import (
    ConfigError,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    RolloutConfig,
    TrackingConfig,
    check_choice,
    check_range,
)
from rlcore.data.sources import task_name
from rlcore.data.tasks import get_task, split_of
from rlcore.models.build import build_model
from rlcore.models.loading import load_tokenizer, response_logprobs
from rlcore.models.sft import answer_batch
from rlcore.rewards.judge import average_scores, judge_prompt
from rlcore.runtime.cluster import init_ray, role_threads
from rlcore.runtime.group import ActorGroup, gather, with_retries
from rlcore.runtime.run import Run

JUDGES = ("self", "verifier", "random")
"""Who scores the candidates (`Config.judge`)."""


@dataclass
class Config:
    """Self-rewarding: one nested config per role, the seed model, then the algorithm's own settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model M0 is fine-tuned from (or M0 itself when seed_model.enabled is false)."""
    seed_model: SeedConfig = field(default_factory=SeedConfig)
    """IFT + EFT fine-tuning that makes M0 (cached on disk)."""
    data: DataConfig = field(default_factory=DataConfig)
    """A task:<name> source: seed prompts, the verifier (for evaluation only) and held-out prompts."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engines; n_samples, temperature and top_p are the candidates' sampling (N = 4 in the paper)."""
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=2e-4))
    """DPO learner ranks."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Run folder and wandb."""
    iterations: int = 3
    """Self-rewarding iterations: M1, M2, M3."""
    new_prompts: int = 512
    """Prompts the model writes per iteration (before malformed, duplicate and held-out ones are dropped)."""
    seed_prompts: int = 1000
    """Train prompts the few-shot examples of self-instruction are drawn from."""
    prompt_temperature: float = 1.0
    """Sampling temperature of prompt writing."""
    prompt_max_tokens: int = 16
    """Longest written prompt (tokens)."""
    judge_samples: int = 3
    """Judgements sampled and averaged per candidate (3 in the paper)."""
    judge_temperature: float = 1.0
    """Sampling temperature of the judge."""
    judge_max_tokens: int = 4
    """Longest judgement (4 fits the compact " 5"; the rubric needs ~150)."""
    judge: str = "self"
    """Who scores the candidates: self (the paper: the current model as its judge), verifier (the task's
    verifier: the upper-bound control) or random (seeded random scores: the lower-bound control)."""
    judge_replay: int = 0
    """Fresh judge (EFT) training examples per iteration, trained with SFT steps interleaved with the DPO steps
    (0 = the paper's loop: the judge is only trained in M0)."""
    loss: str = "sigmoid"
    """Preference loss: sigmoid (DPO) or ipo."""
    beta: float = 0.1
    """DPO β (IPO's τ)."""
    min_margin: float = 0.0
    """Keep a pair only if its best and worst judge scores differ by at least this much (0 = any difference)."""
    nll_weight: float = 0.0
    """Weight of an NLL term on the chosen responses (Pang et al. 2024, IRPO); 0 = the paper's pure DPO."""
    epochs: int = 2
    """Passes over each iteration's pairs."""
    pairs_per_step: int = 64
    """Pairs per optimizer step (rounded down to a multiple of the learner ranks)."""
    judge_eval_prompts: int = 128
    """Held-out prompts whose M0 candidates form the fixed judge-evaluation set."""
    seed: int = 0
    """Seed of few-shot draws, sampling, pair order and the judge-evaluation candidates (each iteration's
    seeds derive from it and the iteration number)."""
    resume: str = ""
    """A run folder to continue from its latest checkpoint (one per iteration; same config otherwise)."""

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, sorted(losses.PREFERENCE_LOSSES))
        check_choice("judge", self.judge, JUDGES)
        check_range("judge_replay", self.judge_replay, 0)
        for key in ("iterations", "new_prompts", "seed_prompts", "judge_samples", "judge_max_tokens", "epochs",
                    "pairs_per_step", "judge_eval_prompts", "prompt_max_tokens"):
            check_range(key, getattr(self, key), 1)
        check_range("beta", self.beta, 1e-6)
        check_range("rollout.n_samples", self.rollout.n_samples, 2)  # best vs worst needs two candidates
        for role in ("rollout", "learner"):
            check_range(f"{role}.num_workers", getattr(self, role).num_workers, 1)
        if task_name(self.data.train) is None:
            raise ConfigError(f"data.train: self-rewarding writes its prompts from a built-in task and evaluates "
                              f"with its verifier; name one as task:<name>, got {self.data.train!r}")


@dataclass
class Topology:
    rollout_workers: ActorGroup[RolloutWorker]
    learner: ActorGroup[LearnerWorker]

    def kill(self) -> None:
        self.rollout_workers.kill()
        self.learner.kill()

    def roles(self) -> dict[str, ActorGroup]:
        """The groups by role name, for `usage_metrics`."""
        return {"rollout": self.rollout_workers, "learner": self.learner}


def build_topology(config: Config, seed_model: str) -> Topology:
    """Rollout engines that write, answer and judge, and the learner that trains the same model."""
    config = replace(config, rollout=role_threads(config.rollout), learner=role_threads(config.learner))
    return Topology(
        rollout_workers=ActorGroup.from_config(
            RolloutWorker, config.rollout, seed_model, config.rollout, dtype=config.model.dtype,
            enable_lora=config.model.lora_rank > 0, max_lora_rank=max(config.model.lora_rank, 1)),
        learner=ActorGroup.from_config(
            LearnerWorker, config.learner, seed_model, config.model, config.learner, distributed=True,
            seed=config.seed),
    )


# ---------------------------------------------------------------------------- objective (runs inside learners)


def preference_objective(model, pairs: Batch, loss: str, beta: float, nll_weight: float = 0.0):
    """DPO / IPO over pairs laid out as rows 2i (chosen) and 2i+1 (rejected); log π(y) sums response tokens.
    With nll_weight > 0, plus that times the chosen responses' per-token negative log-likelihood (IRPO).

    A mean over pairs (each pair is one group: train with mean_over="groups", so that micro-batches hold whole
    pairs and every pair of a step weighs the same). The NLL term is a token mean within the micro-batch,
    weighted by its pairs like the rest: the step's exact token mean when the step is one micro-batch."""
    token_logps = response_logprobs(model, pairs)  # [2P, R]
    logps = token_logps.sum(-1)
    ref_logps = pairs.ref_logprobs.sum(-1)  # [2P]
    pair_losses, chosen_rewards, rejected_rewards = losses.PREFERENCE_LOSSES[loss](
        logps[0::2], logps[1::2], ref_logps[0::2], ref_logps[1::2], beta)
    nll = losses.sft_loss(token_logps[0::2], pairs.response_mask[0::2])
    return pair_losses.mean() + nll_weight * nll, {
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean(), "chosen_nll": nll}


# ---------------------------------------------------------------------------- steps of an iteration


def write_prompts(rollout_workers, task, requests: list[str], config: Config, seed: int | None = None
                  ) -> tuple[list[str], dict]:
    """Self-instruction: one new prompt per request; malformed, duplicate and held-out prompts are dropped."""
    sampling = Sampling(temperature=config.prompt_temperature, max_new_tokens=config.prompt_max_tokens, stop=["\n"],
                        seed=seed)
    written = [r.strip() for r in generate(rollout_workers, requests, sampling).info["response"]]
    kept, counts = {}, {"written": len(written), "malformed": 0, "duplicate": 0, "heldout": 0}
    for prompt in written:
        reason = ("malformed" if not task.is_well_formed(prompt) else "duplicate" if prompt in kept
                  else "heldout" if split_of(prompt) == "heldout" else None)
        if reason:
            counts[reason] += 1
        else:
            kept[prompt] = None
    return list(kept), {**counts, "kept": len(kept)}


def score_candidates(rollout_workers, task, prompts: list[str], responses: list[str], config: Config, seed: int
                     ) -> tuple[list, int]:
    """The candidates' scores by `config.judge`: the model's own judgements (`self_judge`), the verifier's score,
    or a seeded random score; and the number of malformed judgements."""
    if config.judge == "verifier":
        return [verifier_score(task, p, r) for p, r in zip(prompts, responses)], 0
    if config.judge == "random":
        rng = random.Random(f"random-judge:{seed}")
        return [rng.uniform(0, MAX_SCORE) for _ in prompts], 0
    return self_judge(rollout_workers, prompts, responses, config, seed)


def replay_objective(model, batch: Batch):
    """Token-mean NLL of judge completions (EFT examples replayed during an iteration)."""
    nll = losses.sft_loss(response_logprobs(model, batch), batch.response_mask)
    return nll, {"judge_nll": nll}


def replay_batches(task, tokenizer, config: Config, steps: int, seed: int, multiple: int = 1) -> list[Batch]:
    """`config.judge_replay` fresh EFT examples in up to `steps` batches of at least `multiple` examples (one
    for each learner rank; a smaller remainder is dropped); none when off."""
    if not config.judge_replay:
        return []
    examples = eft_examples(task, config.judge_replay, seed, config.seed_model.template)
    size = max(multiple, math.ceil(len(examples) / max(steps, 1)))
    chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
    return [answer_batch(tokenizer, chunk) for chunk in chunks if len(chunk) >= multiple]


def self_judge(rollout_workers, prompts: list[str], responses: list[str], config: Config, seed: int | None = None
               ) -> tuple[list, int]:
    """LLM-as-a-Judge with the current weights: `judge_samples` judgements per response, parsed and averaged.

    Returns one averaged score per response (None when no judgement parsed) and the number of malformed judgements.
    """
    template = JUDGE_TEMPLATES[config.seed_model.template]
    requests = [judge_prompt(p, r, template) for p, r in zip(prompts, responses)]
    sampling = Sampling(n=config.judge_samples, temperature=config.judge_temperature,
                        max_new_tokens=config.judge_max_tokens, seed=seed)
    judgements = generate(rollout_workers, requests, sampling).info["response"]
    k = config.judge_samples
    parsed = [judge_score(config.seed_model.template, text, responses[i // k])
              for i, text in enumerate(judgements)]
    return [average_scores(parsed[i * k : (i + 1) * k]) for i in range(len(requests))], parsed.count(None)


# ---------------------------------------------------------------------------- the loop


def train(config: Config) -> dict:
    task = get_task(task_name(config.data.train), seed=config.data.seed)
    seed_path, seed_stats = ((build_model(config.model.path), {}) if not config.seed_model.enabled else
                             seed_checkpoint(config.model.path, task.name, config.seed_model))
    tokenizer = load_tokenizer(seed_path) if config.judge_replay else None
    init_ray()
    seed_prompts = task.few_shot_prompts(config.seed_prompts, config.seed)
    eval_prompts = [e.prompt for e in task.examples("heldout", config.data.eval_size)]
    multiple = config.learner.num_workers  # every rank gets whole pairs; its micro-batches keep them whole
    objective = partial(preference_objective, loss=config.loss, beta=config.beta, nll_weight=config.nll_weight)
    run = Run(config, "self_rewarding", config.resume)
    topology = build_topology(config, seed_path)
    retries = config.rollout.max_restarts
    resync = WeightSync(topology.learner, topology.rollout_workers, transport=config.rollout.weight_sync)
    try:
        state = run.restore(policy=topology.learner)
        if state:
            resync()
            judge_set, table = state["judge_set"], state["table"]
        else:
            with run.timer.phase("eval"):
                judge_set = judge_eval_set(topology, task, eval_prompts[: config.judge_eval_prompts], config)
                table = [evaluate(topology, task, eval_prompts, judge_set, config, "M0")]
            run.log({**table[-1], **usage_metrics(topology.roles())}, step=0)
        print_row(table[0], header=True)
        for row in table[1:]:
            print_row(row)
        first = state["step"] + 1 if state else 1
        for iteration in tqdm(range(first, config.iterations + 1), desc="self-rewarding", unit="iteration"):
            seed = config.seed * 1_000_003 + iteration  # samples, few-shot draws and pair order: the iteration's
            rng = random.Random(seed)
            with run.timer.phase("self_instruct"):
                requests = [self_instruct_prompt(rng.sample(seed_prompts, config.seed_model.shots))
                            for _ in range(config.new_prompts)]
                prompts, prompt_counts = with_retries(
                    lambda: write_prompts(topology.rollout_workers, task, requests, config, seed),
                    retries, "self_instruct", resync)
                if not prompts:
                    raise RuntimeError(f"iteration {iteration}: the model wrote no usable prompt ({prompt_counts}); "
                                       "M0 must learn self-instruction (seed_model.enabled)")
            with run.timer.phase("candidates"):
                candidates = with_retries(lambda: generate(
                    topology.rollout_workers, prompts, replace(Sampling.from_config(config.rollout), seed=seed)),
                    retries, "candidates", resync)
            with run.timer.phase("judge"):
                scores, malformed = with_retries(lambda: score_candidates(
                    topology.rollout_workers, task, candidates.info["prompt"], candidates.info["response"], config,
                    seed), retries, "judge", resync)
            with run.timer.phase("pairs"):
                rows, pair_counts = best_vs_worst(candidates, scores, config.min_margin)
                pairs = candidates.select(rows)
                pairs.ref_logprobs = pairs.logprobs  # log π_{M_{t-1}}, returned while sampling
                gap = {}
                if recomputes_logprobs(config.rollout, config.model.dtype):  # the learner still holds M_{t-1}
                    pairs.ref_logprobs = learner_logprobs(topology.learner, pairs)
                    gap = losses.logprob_gap(pairs.logprobs, pairs.ref_logprobs, pairs.response_mask)
            with run.timer.phase("dpo"):
                stats, replayed, generator = [], [], torch.Generator().manual_seed(seed)
                minibatches = [minibatch for _ in range(config.epochs)
                               for minibatch in pair_minibatches(pairs, config.pairs_per_step, multiple, generator)]
                replay = replay_batches(task, tokenizer, config, len(minibatches), seed, multiple)
                for index, minibatch in enumerate(minibatches):
                    stats += gather(topology.learner.shard(LearnerWorker.train_step, minibatch, objective,
                                                           mean_over="groups"))
                    if index < len(replay):  # judge examples between DPO steps (judge_replay > 0)
                        replayed += gather(topology.learner.shard(LearnerWorker.train_step, replay[index],
                                                                  replay_objective, mean_over="tokens"))
            with run.timer.phase("sync"):
                with_retries(resync, retries, "sync")
            with run.timer.phase("eval"):
                row = evaluate(topology, task, eval_prompts, judge_set, config, f"M{iteration}")
            row.update({**{f"prompts_{k}": v for k, v in prompt_counts.items()}, **pair_counts,
                        "judge_malformed": malformed, **verifier_view(task, candidates, pairs, scores),
                        **{f"logprob_gap/{k}": float(v) for k, v in gap.items()},
                        **{f"dpo/{k}": sum(s[k] for s in stats) / len(stats) for k in (stats[0] if stats else [])},
                        **({"replay/judge_nll": sum(s["judge_nll"] for s in replayed) / len(replayed)}
                           if replayed else {})})
            table.append(row)
            run.checkpoint(iteration, config.iterations, {"judge_set": judge_set, "table": table},
                           policy=topology.learner)
            run.log({**row, **usage_metrics(topology.roles())}, step=iteration)  # actor-seconds so far
            print_row(row)
        final_usage = usage_metrics(topology.roles())
        model_path = run.finish(topology.learner)
    finally:
        run.close()
        topology.kill()
    wall = run.seconds
    (run.run_dir / "table.json").write_text(json.dumps({"seed_model": seed_stats, "iterations": table,
                                                        "wall_seconds": wall}, indent=2, default=str))
    (run.run_dir / "table.md").write_text(markdown_table(table) + f"\n\nwall time {wall:.0f} s\n")
    result = {"algorithm": "self_rewarding", "run_dir": str(run.run_dir), "model_path": model_path,
              "iterations": config.iterations,
              "seed_model": seed_path, "heldout_accuracy_before": table[0]["heldout_accuracy"],
              "heldout_accuracy_after": table[-1]["heldout_accuracy"], "table": table, "wall_seconds": wall,
              **final_usage}
    print(f"Self-rewarding on {task.name}: held-out greedy accuracy {result['heldout_accuracy_before']:.1%} "
          f"-> {result['heldout_accuracy_after']:.1%} in {config.iterations} iterations, {wall:.0f} s; "
          f"table in {run.run_dir}/table.md; model in {model_path}")
    return result


def judge_eval_set(topology: Topology, task, prompts: list[str], config: Config) -> dict[str, list]:
    """The fixed set the judge is measured on: M0's sampled candidates for held-out prompts, with the verifier's
    scores (plain lists, saved in checkpoints)."""
    batch = generate(topology.rollout_workers, prompts, replace(Sampling.from_config(config.rollout), seed=config.seed))
    return {"prompt": batch.info["prompt"], "response": batch.info["response"], "group": batch.group.tolist(),
            "truth": [verifier_score(task, p, r) for p, r in zip(batch.info["prompt"], batch.info["response"])]}


def evaluate(topology: Topology, task, eval_prompts, judge_set: dict, config: Config, name: str) -> dict:
    """Held-out greedy accuracy and the judge's quality on the fixed judge-evaluation set."""
    accuracy = greedy_accuracy(topology.rollout_workers, task, eval_prompts, config.rollout.max_new_tokens)
    scores, malformed = self_judge(topology.rollout_workers, judge_set["prompt"], judge_set["response"], config,
                                   seed=config.seed)
    return {"model": name, "heldout_accuracy": accuracy,
            **judge_quality(judge_set["group"], scores, judge_set["truth"])}


def verifier_view(task, candidates: Batch, pairs: Batch, scores: list) -> dict:
    """What the verifier says of an iteration's data (logged, never trained on): the candidates' accuracy, how
    often the chosen and the rejected responses are right, and the judge's pairwise accuracy and top pick on
    these candidates, the current policy's own samples (`own_pairwise`, `own_top_pick`)."""
    def right(prompts: list[str], responses: list[str]) -> float:
        return sum(task.verify(p, r) for p, r in zip(prompts, responses)) / max(len(prompts), 1)

    prompts, responses = pairs.info["prompt"], pairs.info["response"]
    truth = [verifier_score(task, p, r) for p, r in zip(candidates.info["prompt"], candidates.info["response"])]
    own = judge_quality(candidates.group.tolist(), scores, truth)
    return {"candidate_accuracy": sum(truth) / MAX_SCORE / max(len(truth), 1),
            "chosen_right": right(prompts[0::2], responses[0::2]),
            "rejected_right": right(prompts[1::2], responses[1::2]),
            "own_pairwise": own["pairwise_accuracy"], "own_top_pick": own["top_pick"]}


TABLE_COLUMNS = ("model", "heldout_accuracy", "pairwise_accuracy", "top_pick", "exact_match", "spearman",
                 "kendall_tau", "prompts_kept", "pairs", "chosen_right", "rejected_right", "own_pairwise",
                 "own_top_pick")
"""The per-iteration table: held-out greedy accuracy; the model's own judge on the fixed judge-evaluation set
(M0's candidates for held-out prompts: pairwise accuracy, top pick, exact match, Spearman, Kendall τ); the
iteration's prompts kept and pairs; how often chosen and rejected are right; and the scores the pairs came from
(`judge`: the model's own, the verifier's or random) on the iteration's own candidates."""


def markdown_table(rows: list[dict]) -> str:
    def cell(value):
        return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(cell(row.get(c)) for c in TABLE_COLUMNS) + " |" for row in rows])


def print_row(row: dict, header: bool = False) -> None:
    text = markdown_table([row]).splitlines()
    print("\n".join(text if header else text[2:]), flush=True)
