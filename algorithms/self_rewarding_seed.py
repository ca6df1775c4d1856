"""Seed data of self-rewarding training (Yuan et al. 2024, §2.1-2.2) and the seed model M0 trained on it.

The paper's seed model is a base LLM fine-tuned on instruction data (IFT) and on
evaluation data (EFT): judge examples made of a prompt, a response, a short
justification and the final "Score: N" of the additive 5-point rubric. It then
writes new prompts few-shot (self-instruction). Here the tasks are verifiable,
so EFT scores follow from the verifier (5 right, 0 wrong), and a third kind of
example teaches the prompt-writing format, which a 1M-parameter model cannot
pick up from a few-shot prompt alone.

Each example is a task-style prompt and the completion the model learns to write
(`rlcore.data.tasks.Example`, so `rlcore.models.sft.answer_batch` batches it):

    IFT             "12+7="                              -> "19"
    EFT, compact    "12+7=19 score:"                     -> " 5"    COMPACT_JUDGE_TEMPLATE, tiny models
    EFT, trace      "3 8 1 6 4>12=8+4 score:"            -> " 12 04@2 00@5 1"   the task's own check
    EFT, rubric     JUDGE_RUBRIC filled with the pair    -> "<justification>\\nScore: 5"    real models
    self-instruct   "12+7=\\n3-45=\\n61+22=\\n"          -> "47-18="   seed prompts one a line, then a new one

`seed_checkpoint` trains M0 on the mix (single process, plain torch, like
rlcore/models/sft.py), stopping once held-out greedy task accuracy reaches a moderate
target, and caches it on disk keyed by its settings and the code that builds it.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock

from rlcore.core.batch import Batch
from rlcore.core.config import check_choice, check_range
from rlcore.core.training import Optimizer, progress
from rlcore.data.tasks import Example, Task, get_task
from rlcore.models.build import build_model
from rlcore.models.cache import SFT_BUILD_CODE, build_key, cache_dir, is_built
from rlcore.models.loading import load_model, load_tokenizer
from rlcore.models.sft import greedy_accuracy, greedy_responses, sft_step
from rlcore.rewards.judge import (
    COMPACT_JUDGE_TEMPLATE,
    JUDGE_RUBRIC,
    compact_judge_completion,
    exact_match,
    judge_prompt,
    kendall_tau,
    pairwise_accuracy,
    parse_score,
    reference_score,
    spearman,
    trace_score,
)

JUDGE_TEMPLATES = {"compact": COMPACT_JUDGE_TEMPLATE, "reference": COMPACT_JUDGE_TEMPLATE,
                   "trace": COMPACT_JUDGE_TEMPLATE, "rubric": JUDGE_RUBRIC}
"""Judge prompt of each judge format: compact, reference and trace (tiny models) share the compact template;
rubric is the paper's Figure 2 (real models)."""
MAX_SCORE = 5
"""The additive rubric's top score."""


def verifier_score(task: Task, prompt: str, response: str) -> int:
    """The ground-truth judge score of a response: MAX_SCORE if the verifier accepts it, else 0."""
    return MAX_SCORE if task.verify(prompt, response) else 0


def judge_completion(score: int, template: str, reference: str = "", trace: str = "") -> str:
    """What the judge is trained to write for `score`, by judge format:

        compact     " 5"                         the score alone
        reference   " 19"                        its own answer; `judge_score` compares the response to it
        trace       " 12 04@2 00@5 1"            the task's step-by-step check (`judge_trace`), then the verdict
        rubric      "<justification>\nScore: 5"
    """
    if template == "compact":
        return compact_judge_completion(score)
    if template == "reference":
        return f" {reference}"
    if template == "trace":
        return f" {trace}"
    reason = ("The response answers the question directly with the exact result, and nothing else."
              if score == MAX_SCORE else "The response is not the correct result, so it does not answer the question.")
    return f"{reason}\nScore: {score}"


def judge_score(template: str, judgement: str, response: str) -> float | None:
    """The score a judgement gives `response`, by judge format; None when it is malformed."""
    if template == "reference":
        return reference_score(judgement, response, MAX_SCORE)
    if template == "trace":
        return trace_score(judgement, MAX_SCORE)
    return parse_score(judgement, MAX_SCORE)


def self_instruct_prompt(few_shot: list[str]) -> str:
    """The prompt-writing format: the few-shot prompts one a line; the model continues with a new prompt."""
    return "".join(prompt + "\n" for prompt in few_shot)


def ift_examples(task: Task, n: int) -> list[Example]:
    """Instruction fine-tuning: train prompts and their reference answers."""
    return task.examples("train", n)


def eft_examples(task: Task, n: int, seed: int, template: str = "compact") -> list[Example]:
    """Evaluation fine-tuning: (prompt, response) judge prompts, about half right, with the verifier's score."""
    if template == "trace" and not hasattr(task, "judge_trace"):
        raise ValueError(f"seed_model.template=trace needs a task that writes judge traces (subset_sum); "
                         f"task {task.name!r} has none")
    return [
        Example(judge_prompt(row["prompt"], row["response"], JUDGE_TEMPLATES[template]),
                judge_completion(MAX_SCORE if row["correct"] else 0, template, task.answer(row["prompt"]),
                                 task.judge_trace(row["prompt"], row["response"]) if template == "trace" else ""))
        for row in task.judge_examples("train", n, seed)
    ]


def self_instruct_examples(task: Task, n: int, shots: int, seed: int) -> list[Example]:
    """Prompt writing: `shots` random train prompts one a line -> another train prompt."""
    rng = random.Random(f"self-instruct:{seed}")
    pool = task.few_shot_prompts(min(4 * n + shots, 20_000), seed)
    rows = []
    for _ in range(n):
        picked = rng.sample(pool, shots + 1)
        rows.append(Example(self_instruct_prompt(picked[:shots]), picked[shots]))
    return rows


@dataclass
class SeedConfig:
    """The seed model M0: IFT + EFT (+ prompt writing) supervised fine-tuning of `model.path`."""

    enabled: bool = True
    """Train M0 from model.path; False = model.path already is an IFT+EFT model (a real one, say)."""
    template: str = "compact"
    """Judge format: compact, reference or trace (tiny models; trace needs a task with `judge_trace`) or rubric
    (the paper's Figure 2, real models)."""
    target_accuracy: float = 0.35
    """Stop once held-out greedy task accuracy reaches this (a moderate seed leaves room to improve)."""
    min_steps: int = 0
    """Train at least this many steps (time for the judge to learn), whatever the accuracy."""
    max_steps: int = 3000
    """Upper bound on optimizer steps."""
    ift_size: int = 16000
    """Instruction examples (task prompts with answers)."""
    eft_size: int = 16000
    """Judge examples (about half right, half near-miss wrong answers)."""
    self_instruct_size: int = 4000
    """Prompt-writing examples."""
    shots: int = 3
    """Seed prompts shown per prompt-writing example (and at self-instruction time)."""
    batch_size: int = 128
    """Examples per step, drawn from the whole mix."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    eval_every: int = 50
    """Steps between held-out evaluations."""
    eval_size: int = 256
    """Held-out prompts per evaluation."""
    seed: int = 0
    """Seed of data, order and initialisation."""

    def __post_init__(self) -> None:
        check_choice("template", self.template, sorted(JUDGE_TEMPLATES))
        check_range("target_accuracy", self.target_accuracy, 0, 1)
        check_range("max_steps", self.max_steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("shots", self.shots, 1)


def seed_examples(task: Task, config: SeedConfig) -> dict[str, list[Example]]:
    """The IFT, EFT and prompt-writing examples of the seed mix, by kind."""
    return {"ift": ift_examples(task, config.ift_size),
            "eft": eft_examples(task, config.eft_size, config.seed + 1, config.template),
            "self_instruct": self_instruct_examples(task, config.self_instruct_size, config.shots, config.seed + 2)}


def judge_accuracy(model, tokenizer, task: Task, rows: list[dict], template: str, max_new_tokens: int) -> float:
    """Share of held-out judge examples whose greedy judgement equals the verifier's score."""
    prompts = [judge_prompt(r["prompt"], r["response"], JUDGE_TEMPLATES[template]) for r in rows]
    verdicts = greedy_responses(model, tokenizer, prompts, max_new_tokens)
    truth = [verifier_score(task, r["prompt"], r["response"]) for r in rows]
    return sum(judge_score(template, v, r["response"]) == t
               for v, r, t in zip(verdicts, rows, truth)) / len(rows)


SEED_BUILD_CODE = (*SFT_BUILD_CODE, Path(__file__), "rewards/judge.py")
"""Source that builds M0: the SFT step and its base model's build, this file and the judge templates."""


def seed_dir(model: str, task_name: str, config: SeedConfig) -> Path:
    """The cache folder of M0 for these settings, keyed by them and by the code that builds it."""
    key = build_key({"model": model, "task": task_name, **asdict(config)}, SEED_BUILD_CODE)
    return cache_dir() / "self_reward_seed" / f"{model.replace(':', '-').replace('/', '_')}-{task_name}-{key}"


def train_seed(model_name: str, task_name: str, config: SeedConfig, path: Path, max_new_tokens: int = 8) -> dict:
    """IFT + EFT SFT until held-out greedy accuracy reaches the target; saves model, tokenizer and seed.json.

    Each step's batch is of one kind, drawn with probability proportional to the kind's size, so that it
    pads only to its own kind's length (a compact EFT row is about twice as long as an IFT row).
    """
    torch.manual_seed(config.seed)
    task = get_task(task_name)
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name)
    kinds = [rows for rows in seed_examples(task, config).values() if rows]
    shares = torch.tensor([len(rows) for rows in kinds], dtype=torch.float)
    heldout = task.examples("heldout", config.eval_size)
    judge_rows = task.judge_examples("heldout", config.eval_size, config.seed + 3)
    judge_tokens = {"compact": 2, "reference": 8, "trace": 48}.get(config.template, 256)
    optimizer = Optimizer(model, config.lr, config.warmup_steps)
    generator = torch.Generator().manual_seed(config.seed)
    start, step, accuracy = time.time(), 0, 0.0
    bar = progress(config.max_steps, f"seed {task_name}")
    while step < config.max_steps and (accuracy < config.target_accuracy or step < config.min_steps):
        kind = kinds[int(torch.multinomial(shares, 1, generator=generator))]
        rows = torch.randint(len(kind), (config.batch_size,), generator=generator).tolist()
        loss = sft_step(model, tokenizer, [kind[i] for i in rows], optimizer)
        step += 1
        bar.update(1)
        if step % config.eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, task, heldout, max_new_tokens)
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_acc=f"{accuracy:.3f}")
    bar.close()
    result = {
        "path": str(path), "steps": step, "heldout_accuracy": accuracy,
        "judge_accuracy": judge_accuracy(model, tokenizer, task, judge_rows, config.template, judge_tokens),
        "seconds": round(time.time() - start, 1),
    }
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "seed.json").write_text(json.dumps(result, indent=2))
    return result


def seed_checkpoint(model: str, task_name: str, config: SeedConfig) -> tuple[str, dict]:
    """The cached seed model M0 for these settings and its stats: built (explicitly, logged) on first use, safe
    across processes; a build that dies leaves no half folder behind."""
    path = seed_dir(model, task_name, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not is_built(path):
            base = build_model(model)
            print(f"building the self-rewarding seed M0 on {model} ({base}) -> {path}", flush=True)
            partial = path.with_name(path.name + f".partial-{os.getpid()}")
            result = train_seed(base, task_name, config, partial)
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)
            (path / "seed.json").write_text(json.dumps({**result, "path": str(path)}, indent=2))
            print(f"built M0: held-out accuracy {result['heldout_accuracy']:.1%}, judge accuracy "
                  f"{result['judge_accuracy']:.1%} after {result['steps']} steps in {result['seconds']:.0f} s", flush=True)
    return str(path), json.loads((path / "seed.json").read_text())


# ---------------------------------------------------------------------------- pairs and judge quality


def best_vs_worst(candidates: Batch, scores: list, min_margin: float = 0.0) -> tuple[list[int], dict]:
    """Rows [chosen_0, rejected_0, chosen_1, ...]: each prompt's highest- and lowest-scored candidate.

    Prompts whose scored candidates all tie (or whose best and worst are the same text) give no pair, and so
    do those whose best and worst scores differ by less than `min_margin` (counted as ties).
    """
    by_prompt: dict[int, list[int]] = {}
    for row, group in enumerate(candidates.group.tolist()):
        if scores[row] is not None:
            by_prompt.setdefault(group, []).append(row)
    rows, ties = [], 0
    for members in by_prompt.values():
        best = max(members, key=lambda r: scores[r])
        worst = min(members, key=lambda r: scores[r])
        if (scores[best] == scores[worst] or scores[best] - scores[worst] < min_margin
                or candidates.info["response"][best] == candidates.info["response"][worst]):
            ties += 1
            continue
        rows += [best, worst]
    return rows, {"pairs": len(rows) // 2, "ties": ties, "unjudged_prompts": len(set(candidates.group.tolist()))
                  - len(by_prompt)}


def pair_minibatches(pairs: Batch, pairs_per_step: int, multiple: int, generator: torch.Generator) -> list[Batch]:
    """Shuffled minibatches of whole pairs, each a multiple of `multiple` pairs (so ranks and micro-batches
    get whole pairs); the remainder of a shuffle waits for the next epoch."""
    count = len(pairs) // 2
    size = min(pairs_per_step, count) // multiple * multiple
    order = torch.randperm(count, generator=generator).tolist()
    return [pairs.select([row for pair in order[i : i + size] for row in (2 * pair, 2 * pair + 1)])
            for i in range(0, count - size + 1, size)] if size else []


def judge_quality(groups: list[int], scores: list, truth: list[int]) -> dict:
    """The paper's Table 3 against the verifier: pairwise accuracy (within a prompt), top pick (the judge's
    favourite candidate is right, among prompts with right and wrong ones), exact match, Spearman, Kendall τ."""
    rows = [i for i, score in enumerate(scores) if score is not None]
    by_prompt: dict[int, list[int]] = {}
    for i in rows:
        by_prompt.setdefault(groups[i], []).append(i)
    credit = weight = top = contested = 0.0
    for members in by_prompt.values():
        right = sum(truth[i] == MAX_SCORE for i in members)
        if 0 < right < len(members):
            pairs = right * (len(members) - right)
            credit += pairwise_accuracy([scores[i] for i in members], [truth[i] for i in members]) * pairs
            weight += pairs
            best = max(scores[i] for i in members)
            favourites = [i for i in members if scores[i] == best]
            top += sum(truth[i] == MAX_SCORE for i in favourites) / len(favourites)
            contested += 1
    pred, true = [scores[i] for i in rows], [truth[i] for i in rows]
    return {"pairwise_accuracy": credit / weight if weight else math.nan,
            "top_pick": top / contested if contested else math.nan,
            "exact_match": exact_match(pred, true) if rows else math.nan,
            "spearman": spearman(pred, true), "kendall_tau": kendall_tau(pred, true),
            "judged": len(rows) / max(len(scores), 1)}
