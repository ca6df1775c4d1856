"""Trained reward models: a scalar head on the last token, fitted on preference pairs.

The model is a standard `AutoModelForSequenceClassification` with `num_labels=1`
(`rlcore.models.loading.load_model(path, head="reward")`). It reads the prompt as a user
turn of the model's chat template, then the response and eos:

    format_prompt(tokenizer, prompt) + response + eos          ("<bos>12+7=19<eos>" for a tiny model)

and its reward is the head's output on that last token. Training minimises the
ranking loss of InstructGPT (Ouyang et al. 2022, eq. 1), −log σ(r_chosen − r_rejected),
and reports held-out pairwise accuracy (a tie counts ½).

Preference pairs {"prompt", "chosen", "rejected"} come from one of
    task:<name>        the task's `preference_pairs` (right answer vs a plausible wrong one),
                       train and held-out from the task's own splits
    a JSONL / Parquet  `rlcore.data.sources.load_rows(path, "preferences")`
    a TARA JSONL       question, pos_answer.answer, neg_answer.answer
Files are split into train / held-out by a seeded shuffle (`split_rows`).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlcore.core.config import check_range
from rlcore.core.losses import pairwise_reward_loss
from rlcore.core.training import Optimizer, progress
from rlcore.data.sources import load_rows
from rlcore.data.tasks import get_task
from rlcore.models.build import build_model
from rlcore.models.loading import format_prompt, load_model, load_tokenizer
from rlcore.rewards.tara import load_tara

TASK_PREFIX = "task:"


@dataclass
class RMConfig:
    """`rlcore train-rm`: fit a scalar-head reward model on preference pairs."""

    model: str = "tiny:arithmetic"
    """Starting weights: tiny:<task>, sft:<task>, a folder or a Hub name (a new scalar head is added)."""
    data: str = "task:arithmetic"
    """task:<name>, a preferences JSONL/Parquet file ({prompt, chosen, rejected}) or a TARA JSONL file."""
    train_size: int = 4000
    """Training pairs drawn from a task (files: every row not held out)."""
    heldout_size: int = 500
    """Held-out pairs drawn from a task's held-out split."""
    heldout_fraction: float = 0.2
    """Share of a file's rows held out."""
    split_seed: int = 0
    """Seed of the train / held-out shuffle of a file (and of the pairs drawn from a task)."""
    steps: int = 400
    """Optimizer steps."""
    batch_size: int = 64
    """Pairs per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    max_length: int = 256
    """Longest sequence in tokens (longer ones keep their end, where the reward is read)."""
    eval_every: int = 100
    """Steps between held-out evaluations."""
    output_dir: str = ""
    """Where the model goes; empty = runs/rm-<timestamp>."""
    seed: int = 0
    """Seed of initialisation and data order."""
    threads: int = 0
    """Torch threads (0 = all cores)."""

    def __post_init__(self) -> None:
        check_range("heldout_fraction", self.heldout_fraction, 0, 0.9)
        check_range("steps", self.steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0)
        check_range("max_length", self.max_length, 8)
        check_range("eval_every", self.eval_every, 1)


@dataclass
class RMResult:
    path: str
    steps: int
    train_pairs: int
    heldout_pairs: int
    heldout_accuracy_before: float
    heldout_accuracy: float
    train_accuracy: float
    seconds: float


# ---------------------------------------------------------------------------- data


def split_rows(rows: list, heldout_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, the last `round(fraction * n)` rows held out (at least one)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_heldout = max(1, round(heldout_fraction * len(rows))) if heldout_fraction > 0 else 0
    cut = len(rows) - n_heldout
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def is_tara_file(path: str | Path) -> bool:
    """Whether the first row of a JSONL file is a TARA row (has pos_answer / neg_answer)."""
    if Path(path).suffix != ".jsonl":
        return False
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                return isinstance(row, dict) and "pos_answer" in row and "neg_answer" in row
    return False


def load_pairs(config: RMConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) lists of {"prompt", "chosen", "rejected"}."""
    if config.data.startswith(TASK_PREFIX):
        task = get_task(config.data[len(TASK_PREFIX) :])
        return (task.preference_pairs("train", config.train_size, config.split_seed),
                task.preference_pairs("heldout", config.heldout_size, config.split_seed))
    if is_tara_file(config.data):
        rows = [{"prompt": row.question, "chosen": row.pos.answer, "rejected": row.neg.answer}
                for row in load_tara(config.data)]
    else:
        rows = [{key: row[key] for key in ("prompt", "chosen", "rejected")}
                for row in load_rows(config.data, "preferences").rows]
    return split_rows(rows, config.heldout_fraction, config.split_seed)


# ---------------------------------------------------------------------------- scoring


def reward_text(tokenizer, prompt: str, response: str) -> str:
    """What the reward model reads: the prompt as a chat user turn, the response, eos."""
    return format_prompt(tokenizer, prompt) + response + tokenizer.eos_token


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> input_ids, attention_mask [B, T], right-padded."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def encode_right_padded(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask [B, T], right-padded; a text longer than `max_length` keeps its end."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"][-max_length:] for text in texts]
    return right_pad(rows, tokenizer.pad_token_id)


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values [B, T, ...] at each row's last real token of a right-padded batch: [B, ...]."""
    last = attention_mask.long().sum(1) - 1
    return values[torch.arange(values.shape[0], device=values.device), last]


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head on each right-padded row's last real token: [B] (fp32).

    Reads the head from the hidden states rather than the model's own pooled
    logits, whose "last non-pad token" rule breaks when pad == eos.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.score(last_token_values(hidden, attention_mask)).squeeze(-1).float()


@torch.no_grad()
def score_responses(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 64,
                    max_length: int = 256) -> torch.Tensor:
    """Rewards of (prompt, response) pairs: [B]."""
    model.eval()
    device = next(model.parameters()).device
    texts = [reward_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    out = []
    for i in range(0, len(texts), batch_size):
        input_ids, attention_mask = encode_right_padded(tokenizer, texts[i : i + batch_size], max_length)
        out.append(sequence_rewards(model, input_ids.to(device), attention_mask.to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs ranked right; a tie counts ½. chosen, rejected: [N]."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().item()


def heldout_accuracy(model, tokenizer, pairs: list[dict], max_length: int) -> float:
    prompts = [p["prompt"] for p in pairs]
    chosen = score_responses(model, tokenizer, prompts, [p["chosen"] for p in pairs], max_length=max_length)
    rejected = score_responses(model, tokenizer, prompts, [p["rejected"] for p in pairs], max_length=max_length)
    return pairwise_accuracy(chosen, rejected)


# ---------------------------------------------------------------------------- training


def train_reward_model(config: RMConfig) -> RMResult:
    """Fit the scalar head (and the backbone) with the pairwise ranking loss; save model and tokenizer."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    train, heldout = load_pairs(config)
    start_model = build_model(config.model)
    tokenizer = load_tokenizer(start_model)
    model = load_model(start_model, head="reward")
    optimizer = Optimizer(model, config.lr, config.warmup_steps)
    generator = random.Random(config.seed)
    start = time.time()
    accuracy = start_accuracy = heldout_accuracy(model, tokenizer, heldout, config.max_length)
    correct = []
    bar = progress(config.steps, "train-rm")
    for step in range(1, config.steps + 1):
        model.train()
        pairs = [train[generator.randrange(len(train))] for _ in range(config.batch_size)]
        texts = ([reward_text(tokenizer, p["prompt"], p["chosen"]) for p in pairs]
                 + [reward_text(tokenizer, p["prompt"], p["rejected"]) for p in pairs])
        input_ids, attention_mask = encode_right_padded(tokenizer, texts, config.max_length)
        chosen, rejected = sequence_rewards(model, input_ids, attention_mask).chunk(2)
        loss = optimizer.step(pairwise_reward_loss(chosen, rejected))
        bar.update(1)
        correct = (correct + [pairwise_accuracy(chosen.detach(), rejected.detach())])[-20:]
        if step % config.eval_every == 0 or step == config.steps:
            accuracy = heldout_accuracy(model, tokenizer, heldout, config.max_length)
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_acc=f"{accuracy:.3f}")
    bar.close()
    path = Path(config.output_dir or f"runs/rm-{time.strftime('%Y%m%d-%H%M%S')}")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    result = RMResult(str(path), config.steps, len(train), len(heldout), start_accuracy, accuracy,
                      sum(correct) / max(1, len(correct)), round(time.time() - start, 1))
    (path / "rlcore_rm.json").write_text(json.dumps({"config": asdict(config), "result": asdict(result)}, indent=2))
    if not math.isfinite(accuracy):
        raise RuntimeError("held-out pairwise accuracy is not finite")
    return result


Config = RMConfig


def train(config: RMConfig) -> dict:
    """Entry point of `rlcore train-rm`."""
    result = train_reward_model(config)
    print(f"reward model on {config.data}: held-out pairwise accuracy {result.heldout_accuracy_before:.1%} -> "
          f"{result.heldout_accuracy:.1%} ({result.heldout_pairs} pairs) in {result.steps} steps, "
          f"{result.seconds:.0f} s; saved to {result.path}")
    return asdict(result)
