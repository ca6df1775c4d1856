"""The one training-loop helper of the single-process trainers (SFT, the self-rewarding seed, the reward
model, Themis): AdamW, a linear warm-up then a constant or cosine learning rate, clipped steps, and a
progress bar. Actor-based learners use DeepSpeed instead (actors/learner.py).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm


def lr_factor(step: int, warmup_steps: int, total_steps: int | None = None, floor: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based).

    Linear warm-up: (step + 1) / warmup_steps for the first `warmup_steps` steps. Then 1.0 when
    `total_steps` is None, else a cosine from 1.0 down to `floor` at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Optimizer:
    """AdamW (betas 0.9/0.98, weight decay 0.01) with the `lr_factor` schedule; `step(loss)` does one update."""

    def __init__(self, model: torch.nn.Module, lr: float, warmup_steps: int, total_steps: int | None = None,
                 clip: float = 1.0, weight_decay: float = 0.01):
        self.parameters = list(model.parameters())
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))
        self.clip = clip

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip the gradient norm at `clip`, step the optimizer and the schedule; returns `loss`."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def progress(total: int, desc: str) -> tqdm:
    """The progress bar of a training loop: steps, rate and the postfix the loop sets."""
    return tqdm(total=total, desc=desc, unit="step")
