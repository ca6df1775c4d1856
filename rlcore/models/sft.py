"""SFT warm start: teach a model a task up to a moderate held-out accuracy.

RL needs both room to improve and some signal to start from, so `train_sft`
stops as soon as held-out greedy accuracy reaches `target_accuracy` (checked
every `eval_every` steps) or after `max_steps`, and saves that checkpoint.
Single process, plain torch: this is a few minutes of work on a laptop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import check_range
from rlcore.core.tracking import new_run_dir
from rlcore.core.training import Optimizer, progress
from rlcore.data.tasks import Example, Task, get_task
from rlcore.models.cache import TINY_PREFIX
from rlcore.models.loading import encode_prompts, load_model, load_tokenizer, response_logprobs
from rlcore.models.tiny import TinyModelSpec, build_tiny_model


@dataclass
class SFTConfig:
    """Supervised warm start on a verifiable task."""

    model: str = "tiny:arithmetic"
    """Starting model: tiny:<task>, a folder or a Hub name."""
    task: str = "arithmetic"
    """Task to learn (rlcore.data.tasks)."""
    output_dir: str = ""
    """Where the checkpoint goes; empty = a new run folder runs/sft-<time>."""
    target_accuracy: float = 0.45
    """Stop once held-out greedy accuracy reaches this (0-1)."""
    max_steps: int = 3000
    """Upper bound on optimizer steps."""
    train_size: int = 16000
    """Training examples drawn from the task's train split."""
    batch_size: int = 128
    """Examples per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    eval_every: int = 50
    """Steps between held-out evaluations."""
    eval_size: int = 256
    """Held-out prompts per evaluation."""
    max_new_tokens: int = 8
    """Greedy generation length for evaluation."""
    seed: int = 0
    """Seed of data order and initialisation."""
    threads: int = 2
    """Torch threads. Fixed, so that a build gives the same weights in any process on any core count."""

    def __post_init__(self) -> None:
        check_range("target_accuracy", self.target_accuracy, 0, 1)
        check_range("max_steps", self.max_steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("eval_every", self.eval_every, 1)


@dataclass
class SFTResult:
    path: str
    steps: int
    accuracy: float
    start_accuracy: float
    seconds: float


def answer_batch(tokenizer, examples: list[Example]) -> Batch:
    """Prompts formatted with the chat template, responses = answer + eos."""
    prompt_ids = encode_prompts(tokenizer, [e.prompt for e in examples])
    response_ids = [tokenizer(e.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                    for e in examples]
    return make_batch(prompt_ids, response_ids, tokenizer.pad_token_id)


@torch.no_grad()
def greedy_responses(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """Greedy answers with transformers `generate` (the single-process path; actors use vLLM)."""
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = encode_prompts(tokenizer, prompts[i : i + batch_size])
        enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def greedy_accuracy(model, tokenizer, task: Task, examples: list[Example], max_new_tokens: int) -> float:
    responses = greedy_responses(model, tokenizer, [e.prompt for e in examples], max_new_tokens)
    return sum(task.verify(e.prompt, r) for e, r in zip(examples, responses)) / len(examples)


def sft_step(model, tokenizer, examples: list[Example], optimizer: Optimizer) -> torch.Tensor:
    """One optimizer step of token-mean NLL on the examples' answers; the loss."""
    model.train()
    batch = answer_batch(tokenizer, examples)
    return optimizer.step(-(response_logprobs(model, batch).sum() / batch.response_mask.sum()))


def train_sft(config: SFTConfig, path: str | Path) -> SFTResult:
    """Train until held-out greedy accuracy reaches the target; save model + tokenizer in `path`."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    task = get_task(config.task)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model)
    train = task.examples("train", config.train_size)
    heldout = task.examples("heldout", config.eval_size)
    optimizer = Optimizer(model, config.lr, config.warmup_steps)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.time()
    accuracy = start_accuracy = greedy_accuracy(model, tokenizer, task, heldout, config.max_new_tokens)
    step = 0
    bar = progress(config.max_steps, f"sft {config.task}")
    while step < config.max_steps and accuracy < config.target_accuracy:
        rows = torch.randint(len(train), (config.batch_size,), generator=generator).tolist()
        loss = sft_step(model, tokenizer, [train[i] for i in rows], optimizer)
        step += 1
        bar.update(1)
        if step % config.eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, task, heldout, config.max_new_tokens)
            bar.set_postfix(loss=f"{loss.item():.3f}", heldout_acc=f"{accuracy:.3f}")
    bar.close()
    if not math.isfinite(accuracy) or accuracy < config.target_accuracy:
        print(f"warning: SFT stopped at max_steps={config.max_steps} with held-out accuracy {accuracy:.3f} "
              f"< target {config.target_accuracy}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return SFTResult(str(path), step, accuracy, start_accuracy, time.time() - start)


Config = SFTConfig


def train(config: SFTConfig) -> dict:
    """Entry point of `rlcore train` / `rlcore sft`: train, report before/after accuracy."""
    if config.model.startswith(TINY_PREFIX):  # the tiny start model is built first (cached)
        build_tiny_model(TinyModelSpec(task=config.model[len(TINY_PREFIX) :]))
    result = train_sft(config, config.output_dir or new_run_dir("runs", "", "sft"))
    print(f"SFT on {config.task}: held-out greedy accuracy {result.start_accuracy:.1%} -> {result.accuracy:.1%} "
          f"in {result.steps} steps, {result.seconds:.0f} s; saved to {result.path}")
    return asdict(result)
