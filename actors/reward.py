"""RewardWorker: one interface, `score(batch) -> Scores`, several kinds chosen by `RewardConfig.kind`.

    rule        the task's exact verifier (1.0 right, 0.0 wrong)

Each kind is a small scorer class `(prompts, responses) -> Scores`; `SCORERS`
maps the config's `kind` to it. A scorer that serves the policy's own weights
(a self-judge) also has `update_weights`, which the worker forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlcore.batch import Batch
from rlcore.config import RewardConfig, TaskConfig
from rlcore.tasks import get_task
from rlcore.weights import WeightUpdate


@dataclass
class Scores:
    rewards: torch.Tensor
    """One scalar per sample: [B]."""
    traces: list[str] | None = None
    """What the scorer produced on the way (judge text, tool trace), one per sample."""


class RuleScorer:
    """The task's verifier as a reward."""

    def __init__(self, config: RewardConfig, task: TaskConfig, policy_model: str) -> None:
        self.task = get_task(task.name, seed=task.seed)

    def __call__(self, prompts: list[str], responses: list[str]) -> Scores:
        return Scores(torch.tensor([self.task.verify(p, r) for p, r in zip(prompts, responses)]))


SCORERS: dict[str, type] = {"rule": RuleScorer}


class RewardWorker:
    """Scores samples; reads the prompt and response texts from `batch.info`."""

    def __init__(self, config: RewardConfig, task: TaskConfig, policy_model: str = "") -> None:
        if config.kind not in SCORERS:
            raise ValueError(f"reward.kind {config.kind!r} is not available; choose one of {sorted(SCORERS)}")
        self.scorer = SCORERS[config.kind](config, task, policy_model)

    def score(self, batch: Batch) -> Scores:
        scores = self.scorer(batch.info["prompt"], batch.info["response"])
        if scores.rewards.shape != (len(batch),):
            raise RuntimeError(
                f"reward scorer returned {tuple(scores.rewards.shape)} rewards for a batch of {len(batch)}"
            )
        bad = [i for i, r in enumerate(scores.rewards.tolist()) if not math.isfinite(r)]
        if bad:
            raise RuntimeError(f"reward scorer returned non-finite rewards for samples {bad[:10]}")
        return scores

    def update_weights(self, update: WeightUpdate) -> None:
        """Forward new policy weights to a scorer that judges with them (no-op for the others)."""
        if hasattr(self.scorer, "update_weights"):
            self.scorer.update_weights(update)

    def shutdown(self) -> None:
        if hasattr(self.scorer, "shutdown"):
            self.scorer.shutdown()
