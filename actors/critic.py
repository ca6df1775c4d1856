"""CriticWorker: the PPO value model, trained by the same DeepSpeed machinery as the policy.

It is a LearnerWorker with a token-value head (`AutoModelForTokenClassification`,
one label): started from `config.path` when given, else from the policy's
backbone with a freshly initialised value head. Ranks form their own
data-parallel group, separate from the policy learners'.
"""

from __future__ import annotations

import torch

from actors.learner import LearnerWorker, MeanOver, Objective
from rlcore.core.batch import Batch
from rlcore.core.config import CriticConfig, ModelConfig
from rlcore.models.loading import response_values


class CriticWorker:
    """Value model V(s_t) for every response position; `train_step` runs a value objective."""

    def __init__(
        self,
        model: str,
        model_config: ModelConfig,
        config: CriticConfig,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str | None = None,
        master_port: int | None = None,
        seed: int = 0,
    ) -> None:
        self.learner = LearnerWorker(
            config.path or model,
            model_config,
            config,
            rank=rank,
            world_size=world_size,
            master_addr=master_addr,
            master_port=master_port,
            head="value",
            seed=seed,
        )

    def values(self, batch: Batch) -> torch.Tensor:
        """Critic values before each response token, zero on padding: [B, R] (CPU, fp32)."""
        return self.learner.forward(batch, response_values)

    def train_step(self, batch: Batch, objective: Objective, mean_over: MeanOver = "rows") -> dict[str, float]:
        """One optimizer step of `objective(value_model, micro_batch)` on this rank's share; see LearnerWorker."""
        return self.learner.train_step(batch, objective, mean_over)

    def save(self, path: str) -> None:
        """Checkpoint the critic (every rank)."""
        self.learner.save(path)

    def load(self, path: str) -> int:
        """Restore the latest critic checkpoint under `path` (every rank); returns its version."""
        return self.learner.load(path)
