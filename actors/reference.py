"""ReferenceWorker: a frozen copy of the starting policy that scores responses (KL penalty, DPO reference)."""

from __future__ import annotations

import torch

from actors.learner import batch_to, micro_batches, set_threads
from rlcore.core.batch import Batch
from rlcore.core.usage import busy
from rlcore.models.loading import load_model, model_device, response_logprobs


class ReferenceWorker:
    """Frozen causal LM in eval mode; `logprobs` is its log π_ref of each response token."""

    def __init__(self, model: str, dtype: str = "float32", threads: int = 0, micro_batch_size: int = 64) -> None:
        set_threads(threads)
        self.device = model_device()
        self.model = load_model(model, head="causal_lm", dtype=dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.micro_batch_size = micro_batch_size

    @busy
    @torch.no_grad()
    def logprobs(self, batch: Batch) -> torch.Tensor:
        """log π_ref(response token) at each response position, zero on padding: [B, R] (CPU, fp32)."""
        chunks = micro_batches(batch, self.micro_batch_size)
        return torch.cat([response_logprobs(self.model, batch_to(chunk, self.device)) for chunk in chunks]).cpu()
