"""Training Themis (or, with use_tools=false, the plain reward model it is compared with) on TARA rows.

    L = rank_weight · L_RM + tool_weight · L_tool + rationale_weight · L_rationale

L_RM = −log σ(r_pos − r_neg); L_tool and L_rationale are token-mean NLL of the tool-call text and of the
rationale (see the package docstring).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlcore.core.config import check_range
from rlcore.core.losses import pairwise_reward_loss, sequence_logprobs, sft_loss
from rlcore.core.training import Optimizer, progress
from rlcore.models.build import build_model
from rlcore.models.loading import load_tokenizer
from rlcore.models.tiny import build_tiny_lm
from rlcore.rewards.reward_model import right_pad, split_rows
from rlcore.rewards.tara import TaraRow, load_tara, observations_agree
from rlcore.rewards.themis.generated import generated_rows, restate
from rlcore.rewards.themis.model import ThemisModel, TinyLMSpec, score_segments
from rlcore.rewards.themis.tool_loop import ToolTrace, score_with_tools
from rlcore.rewards.themis.trace import encode_segments, example_segments, render_segments
from rlcore.rewards.tools import TOOLS, Tool, parse_action, run_tool


@dataclass
class ThemisConfig:
    """`rlcore train-themis`: a tool-augmented reward model on TARA rows (or, use_tools=false, a plain one)."""

    data: str = "data/tara/calendar_train.jsonl"
    """A TARA JSON-lines file."""
    heldout_fraction: float = 0.2
    """Share of the rows held out (seeded shuffle)."""
    split_seed: int = 0
    """Seed of the train / held-out split."""
    use_tools: bool = True
    """true: Themis (trace + rationale, LM and ranking losses); false: a plain RM on question + answer."""
    rationale: bool = True
    """false: Themis without the rationale (the paper's w/o L_T ablation): the reward is read after the
    last observation."""
    restated: bool = False
    """true: train on a shaped trace (rlcore.rewards.themis.generated.restate): a short rationale that restates
    the answer's value and the tool's result, then the verdict ("The answer says 279 and the tool says 1759,
    so the answer is wrong.") instead of the recorded one; a second call after a target-date call that has
    the tool compare the dates; "Same as the answer" as a calculator call's input."""
    generated_pairs: int = 0
    """TARA-format pairs added to the training split, made from its Calendar / calculator rows with fresh
    arguments and real tool calls (rlcore.rewards.themis.generated); the held-out split is never used."""
    model: str = "tiny"
    """tiny: a tiny LM with a tokenizer trained on the training rows' text (shape below); else a causal LM
    folder or Hub name."""
    tiny: TinyLMSpec = field(default_factory=TinyLMSpec)
    """Shape of the tiny LM."""
    epochs: int = 40
    """Passes over the training pairs."""
    batch_size: int = 16
    """Pairs per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 10 %)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    rank_weight: float = 1.0
    """Weight of the pairwise ranking loss L_RM."""
    tool_weight: float = 1.0
    """Weight of the LM loss on the tool-call text L_tool."""
    rationale_weight: float = 1.0
    """Weight of the LM loss on the rationale L_rationale."""
    max_length: int = 512
    """Longest sequence in tokens."""
    max_calls: int = 3
    """Tool calls allowed per answer when scoring."""
    max_new_tokens: int = 256
    """Tokens generated per round when scoring."""
    tool_timeout_s: float = 10.0
    """Seconds a tool call may take before it becomes an error observation."""
    eval_generate: bool = True
    """Also measure held-out accuracy with generated traces and real tool calls (slower)."""
    output_dir: str = ""
    """Where the model goes; empty = runs/themis-<timestamp>."""
    seed: int = 0
    """Seed of initialisation and data order."""
    threads: int = 0
    """Torch threads (0 = all cores)."""

    def __post_init__(self) -> None:
        check_range("heldout_fraction", self.heldout_fraction, 0.01, 0.9)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_calls", self.max_calls, 0)
        check_range("generated_pairs", self.generated_pairs, 0)
        for key in ("rank_weight", "tool_weight", "rationale_weight"):
            check_range(key, getattr(self, key), 0)


@dataclass
class ThemisResult:
    path: str
    use_tools: bool
    rationale: bool
    train_pairs: int
    heldout_pairs: int
    steps: int
    seconds: float
    heldout_accuracy_recorded: float
    """Held-out pairwise accuracy scoring the recorded traces (teacher forcing; the recorded rationale
    already says which answer is right, so this is not a fair test of a tool RM)."""
    heldout_accuracy_generated: float | None
    """Held-out pairwise accuracy when the model writes its calls, the real tools run and it writes its
    rationale (None if not measured; for a plain RM it equals the recorded one)."""
    heldout_accuracy_by_type: dict
    """Held-out pairwise accuracy per question type (the tool the row calls): generated traces for a
    tool model, question + answer for a plain one."""
    heldout_call_inputs_right: float | None
    """Share of held-out answers (with a recorded call) whose generated first call names the question's
    tool and arguments, as the recorded call does."""
    heldout_observations_right: float | None
    """Share of those whose generated first observation equals the one the right call gives."""
    final_losses: dict


@dataclass
class PairBatch:
    input_ids: torch.Tensor
    """[2B, T]: the B chosen examples, then the B rejected ones, right-padded."""
    attention_mask: torch.Tensor
    tool_mask: torch.Tensor
    """[2B, T-1], aligned with the next-token targets input_ids[:, 1:]."""
    rationale_mask: torch.Tensor


def make_pair_batch(tokenizer, rows: list[TaraRow], use_tools: bool, max_length: int,
                    rationale: bool = True) -> PairBatch:
    examples = [example_segments(row.question, row.pos, use_tools, rationale) for row in rows]
    examples += [example_segments(row.question, row.neg, use_tools, rationale) for row in rows]
    encoded = [encode_segments(tokenizer, segments, add_eos=True) for segments in examples]
    encoded = [(ids[-max_length:], kinds[-max_length:]) for ids, kinds in encoded]
    input_ids, attention_mask = right_pad([ids for ids, _ in encoded], tokenizer.pad_token_id)
    kinds = [kinds + ["pad"] * (input_ids.shape[1] - len(kinds)) for _, kinds in encoded]
    tool = torch.tensor([[k == "tool" for k in row[1:]] for row in kinds])
    rationale = torch.tensor([[k == "rationale" for k in row[1:]] for row in kinds])
    return PairBatch(input_ids, attention_mask, tool, rationale)


def themis_loss(model: ThemisModel, batch: PairBatch, rank_weight: float, tool_weight: float,
                rationale_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L = rank_weight·L_RM + tool_weight·L_tool + rationale_weight·L_rationale (Themis, eq. 4)."""
    logits, rewards = model(batch.input_ids, batch.attention_mask)
    token_logps = sequence_logprobs(logits[:, :-1], batch.input_ids[:, 1:], batch.attention_mask[:, 1:].bool())
    chosen, rejected = rewards.chunk(2)
    rank = pairwise_reward_loss(chosen, rejected)
    tool = sft_loss(token_logps, batch.tool_mask)
    rationale = sft_loss(token_logps, batch.rationale_mask)
    loss = rank_weight * rank + tool_weight * tool + rationale_weight * rationale
    stats = {"loss": loss.item(), "rank_loss": rank.item(), "tool_loss": tool.item(),
             "rationale_loss": rationale.item(), "train_accuracy": ((chosen > rejected).float().mean().item())}
    return loss, stats


def pair_accuracy(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Share of pairs with pos > neg; ties count ½."""
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in zip(pos, neg)) / max(1, len(pos))


def question_type(row: TaraRow) -> str:
    """The tool the row's positive answer calls first ("no tool" if none): the breakdown of the results."""
    return row.pos.tool_calls[0].action if row.pos.tool_calls else "no tool"


def accuracy_by_type(rows: list[TaraRow], pos: Sequence[float], neg: Sequence[float]) -> dict[str, float]:
    """Pairwise accuracy per `question_type`."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(question_type(row), []).append(index)
    return {kind: pair_accuracy([pos[i] for i in group], [neg[i] for i in group])
            for kind, group in sorted(groups.items())}


def recorded_rewards(model: ThemisModel, tokenizer, rows: list[TaraRow], use_tools: bool,
                     max_length: int = 512, rationale: bool = True) -> tuple[list[float], list[float]]:
    """Rewards of the pos and of the neg answers with the recorded traces (teacher forcing)."""
    pos = score_segments(model, tokenizer, [example_segments(r.question, r.pos, use_tools, rationale)
                                            for r in rows], max_length=max_length)
    neg = score_segments(model, tokenizer, [example_segments(r.question, r.neg, use_tools, rationale)
                                            for r in rows], max_length=max_length)
    return pos.tolist(), neg.tolist()


def _same_input(a: str, b: str) -> bool:
    return [part.strip() for part in a.strip().strip('"').split(",")] == \
        [part.strip() for part in b.strip().strip('"').split(",")]


@dataclass
class CallCheck:
    """Whether the model's first call was the right one, against the recorded call of the same answer."""

    answers: int = 0
    """Answers whose recorded trace has a call."""
    inputs_right: int = 0
    """... whose generated first call names the same tool and arguments."""
    observations_right: int = 0
    """... whose generated first observation equals the one the recorded call gives with the real tool."""


def check_calls(rows: list[TaraRow], traces: list[ToolTrace], tools: Mapping[str, Tool] = TOOLS) -> CallCheck:
    """Traces are the pos answers, then the neg answers, of `rows` (as `generated_rewards` returns them)."""
    check = CallCheck()
    answers = [(r, r.pos) for r in rows] + [(r, r.neg) for r in rows]
    for (row, answer), trace in zip(answers, traces):
        if not answer.tool_calls:
            continue
        check.answers += 1
        recorded = answer.tool_calls[0]
        segments = trace.segments
        first = next((i for i, s in enumerate(segments[:-1]) if s.kind == "tool"
                      and segments[i + 1].kind == "observation"), None)
        if first is None:
            continue
        parsed = parse_action(segments[first].text)
        if parsed and parsed.action == recorded.action and _same_input(parsed.action_input, recorded.action_input):
            check.inputs_right += 1
        right = run_tool(recorded.action, recorded.action_input, row.tool_context(answer), tools)
        check.observations_right += observations_agree(right, segments[first + 1].text)
    return check


def generated_rewards(model: ThemisModel, tokenizer, rows: list[TaraRow], config: ThemisConfig,
                      tools: Mapping[str, Tool] = TOOLS) -> tuple[list[float], list[float], list[ToolTrace]]:
    """Rewards of the pos and of the neg answers when the model writes its calls and the real tools run,
    and the traces (pos answers, then neg answers)."""
    questions = [r.question for r in rows] * 2
    answers = [r.pos.answer for r in rows] + [r.neg.answer for r in rows]
    contexts = [r.tool_context(r.pos) for r in rows] + [r.tool_context(r.neg) for r in rows]
    traces = score_with_tools(model, tokenizer, questions, answers, contexts, tools, config.max_calls,
                              config.max_new_tokens, config.tool_timeout_s, max_length=config.max_length)
    rewards = [t.reward for t in traces]
    return rewards[: len(rows)], rewards[len(rows) :], traces


def variant_name(config: ThemisConfig) -> str:
    if not config.use_tools:
        return "plain"
    return "tools" if config.rationale else "tools, no rationale"


def train_themis(config: ThemisConfig, rows: list[TaraRow] | None = None) -> ThemisResult:
    """Train on the training split of `config.data` (or `rows`), evaluate on the held-out split, save."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = rows if rows is not None else load_tara(config.data)
    train, heldout = split_rows(rows, config.heldout_fraction, config.split_seed)
    # generated pairs come from the rows as recorded: a restated target-date row has two calls and a restated
    # calculator call no annotations, so neither would make a template
    generated = generated_rows(train, config.generated_pairs, config.seed) if config.generated_pairs else []
    if config.restated:
        train, heldout = [restate(r) for r in train], [restate(r) for r in heldout]
    train = train + generated
    out = Path(config.output_dir or f"runs/themis-{time.strftime('%Y%m%d-%H%M%S')}")
    if config.model == "tiny":
        texts = [render_segments(example_segments(r.question, a, True)) for r in train for a in (r.pos, r.neg)]
        lm_path = build_tiny_lm(texts, config.tiny, out / "init")
    else:
        lm_path = build_model(config.model)
    tokenizer = load_tokenizer(str(lm_path))
    torch.manual_seed(config.seed)
    model = ThemisModel(AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32))
    steps_per_epoch = -(-len(train) // config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = Optimizer(model, config.lr, config.warmup_steps, total_steps=total)
    order_rng = random.Random(config.seed)
    start = time.time()
    recent: list[dict] = []
    bar = progress(total, f"train-themis ({variant_name(config)})")
    for _ in range(config.epochs):
        order = list(range(len(train)))
        order_rng.shuffle(order)
        for first in range(0, len(order), config.batch_size):
            model.train()
            batch = make_pair_batch(tokenizer, [train[i] for i in order[first : first + config.batch_size]],
                                    config.use_tools, config.max_length, config.rationale)
            loss, stats = themis_loss(model, batch, config.rank_weight, config.tool_weight, config.rationale_weight)
            optimizer.step(loss)
            recent = (recent + [stats])[-steps_per_epoch:]
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", rank=f"{stats['rank_loss']:.3f}")
    bar.close()
    final_losses = {key: sum(s[key] for s in recent) / len(recent) for key in recent[0]}
    pos, neg = recorded_rewards(model, tokenizer, heldout, config.use_tools, config.max_length, config.rationale)
    recorded = pair_accuracy(pos, neg)
    generated, by_type, inputs_right, observations_right = None, accuracy_by_type(heldout, pos, neg), None, None
    if config.use_tools and config.eval_generate:
        pos, neg, traces = generated_rewards(model, tokenizer, heldout, config)
        generated, by_type = pair_accuracy(pos, neg), accuracy_by_type(heldout, pos, neg)
        check = check_calls(heldout, traces)
        if check.answers:
            inputs_right = check.inputs_right / check.answers
            observations_right = check.observations_right / check.answers
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "heldout_traces.jsonl", "w") as file:
            for trace in traces:
                file.write(json.dumps({"reward": trace.reward, "calls": trace.calls, "finished": trace.finished,
                                       "text": trace.text}) + "\n")
    elif not config.use_tools:
        generated = recorded
    result = ThemisResult(str(out), config.use_tools, config.rationale, len(train), len(heldout), total,
                          round(time.time() - start, 1), recorded, generated, by_type, inputs_right,
                          observations_right, final_losses)
    model.save(out, tokenizer, {"config": asdict(config), "result": asdict(result)})
    return result


Config = ThemisConfig


def train(config: ThemisConfig) -> dict:
    """Entry point of `rlcore train-themis`."""
    result = train_themis(config)
    generated = ("n/a" if result.heldout_accuracy_generated is None
                 else f"{result.heldout_accuracy_generated:.1%}")
    print(f"reward model ({variant_name(config)}) on {config.data}: held-out pairwise accuracy {generated} "
          f"(recorded traces: {result.heldout_accuracy_recorded:.1%}; {result.heldout_pairs} pairs) "
          f"in {result.steps} steps, {result.seconds:.0f} s; saved to {result.path}")
    return asdict(result)
