"""LearnerWorker: one data-parallel rank of a DeepSpeed-trained model.

N ranks (an `ActorGroup(..., distributed=True)`) form one torch.distributed
group. DeepSpeed averages gradients over ranks and micro-batches, so one
optimizer step over a batch split across ranks equals one step over the whole
batch on one rank (tests/test_learner.py checks it).

Losses are not bound to the worker: `train_step` takes an objective, a plain
Python function `objective(model, batch) -> (loss, stats)` that Ray pickles
(e.g. a `functools.partial` of a loss in an algorithm file). The loss should be
a mean over rows of the micro-batch; DeepSpeed divides by the number of
micro-batches and averages over ranks.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import torch

from rlcore.core.batch import Batch
from rlcore.core.config import LearnerConfig, ModelConfig
from rlcore.core.usage import busy
from rlcore.core.weights import WeightUpdate
from rlcore.models.export import save_hf_folder
from rlcore.models.loading import load_model
from rlcore.runtime.rendezvous import init_torch_distributed

Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, Any]]]

PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "value": "TOKEN_CLS", "reward": "SEQ_CLS"}


def set_threads(threads: int) -> None:
    """Torch compute threads: `threads`, or every core this process may use when 0 (Ray sets OMP_NUM_THREADS=1)."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor on `device`."""
    changes = {
        f.name: value.to(device)
        for f in fields(batch)
        if isinstance(value := getattr(batch, f.name), torch.Tensor) and value.device != device
    }
    return replace(batch, **changes) if changes else batch


def lr_lambda(config: LearnerConfig) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step`: linear warm-up, then constant / cosine / linear decay."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def deepspeed_config(config: LearnerConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict a LearnerConfig stands for."""
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accumulation,
        "train_batch_size": config.micro_batch_size * config.grad_accumulation * world_size,
        "zero_optimization": {"stage": config.zero_stage},
        "zero_allow_untested_optimizer": True,  # the client optimizer is torch's AdamW
        "bf16": {"enabled": bool(config.bf16 and on_gpu)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if config.max_grad_norm > 0:
        ds_config["gradient_clipping"] = config.max_grad_norm
    return ds_config


class LearnerWorker:
    """One rank of a DeepSpeed learner: full fine-tuning or PEFT LoRA of a causal LM (or a value/reward head)."""

    def __init__(
        self,
        model: str,
        model_config: ModelConfig,
        config: LearnerConfig,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str | None = None,
        master_port: int | None = None,
        head: str = "causal_lm",
        seed: int = 0,
    ) -> None:
        import deepspeed

        set_threads(config.threads)
        self.config = config
        self.model_path = model
        """The model training started from (its config and tokenizer go into exports)."""
        self.model_config = model_config
        self.head = head
        self.rank = rank
        self.world_size = world_size
        self.version = 0
        """Optimizer steps taken (restored by `load`); WeightUpdates carry it."""
        self.skipped_steps = 0
        """Steps skipped for a non-finite loss (weights untouched)."""
        self.consecutive_skips = 0
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        init_torch_distributed(rank, world_size, master_addr, master_port)

        torch.manual_seed(seed)  # the same on every rank: a new head or LoRA A starts identical everywhere
        module = load_model(model, head=head, dtype=model_config.dtype)
        self.lora_scale: float | None = None
        self.lora = None
        """The peft LoraConfig of a LoRA run, else None."""
        if model_config.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            self.lora = LoraConfig(
                r=model_config.lora_rank,
                lora_alpha=model_config.lora_alpha,
                lora_dropout=model_config.lora_dropout,
                target_modules=list(model_config.lora_target_modules),
                task_type=PEFT_TASK_TYPES[head],
            )
            module = get_peft_model(module, self.lora)
            self.lora_scale = model_config.lora_alpha / model_config.lora_rank
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        self.engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(config, world_size, self.device.type == "cuda"),
            dist_init_required=False,
        )

    @busy
    def train_step(self, batch: Batch, objective: Objective) -> dict[str, float]:
        """One optimizer step on this rank's share `batch`, split into `grad_accumulation` micro-batches.

        Returns the objective's stats and its loss averaged over micro-batches,
        plus `grad_norm` (before clipping, over all ranks), `lr` (the rate this
        step used) and `version` (steps taken, this one included).

        A non-finite loss on any rank skips the whole step on every rank (weights
        untouched, `skipped` = 1 in the result); more than `max_skipped_steps`
        skips in a row raise FloatingPointError.
        """
        self.engine.train()
        lr = self.engine.get_lr()[0]
        micro_batches = batch.split(self.config.grad_accumulation)
        totals: dict[str, float] = {}
        grad_norm = None
        skip = False
        for index, micro in enumerate(micro_batches):
            loss, stats = objective(self.engine, batch_to(micro, self.device))
            skip = skip or not self._finite_on_all_ranks(loss)
            if skip:  # zero gradients keep DeepSpeed's collectives in step on every rank
                loss = sum((p * 0).sum() for p in self.engine.module.parameters() if p.requires_grad)
            self.engine.backward(loss)
            last = index == len(micro_batches) - 1
            if last and skip:
                for group in self.engine.optimizer.param_groups:
                    group["lr"] = 0.0  # AdamW with lr 0 leaves every weight as it is; the schedule resets lr
            if last and self.config.zero_stage == 0:
                grad_norm = self._grad_norm()  # gradients are all-reduced now; stage 0 does not record the norm
            self.engine.step()
            if not skip:
                for key, value in {"loss": loss, **stats}.items():
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    totals[key] = totals.get(key, 0.0) + float(value) / len(micro_batches)
        if skip:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips > self.config.max_skipped_steps:
                raise FloatingPointError(
                    f"non-finite loss in {self.consecutive_skips} consecutive steps "
                    f"(learner.max_skipped_steps={self.config.max_skipped_steps}); stopping"
                )
            return {"skipped": 1.0, "skipped_steps": float(self.skipped_steps), "lr": lr, "version": self.version}
        self.consecutive_skips = 0
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        self.version += 1
        return {**totals, "grad_norm": float(grad_norm), "lr": lr, "version": self.version,
                "skipped": 0.0, "skipped_steps": float(self.skipped_steps)}

    @busy
    @torch.no_grad()
    def forward(self, batch: Batch, fn: Callable[[torch.nn.Module, Batch], Any]) -> Any:
        """`fn(model, chunk)` in eval mode without gradients, over chunks of `micro_batch_size` rows.

        Tensor results (or dicts of tensors) are concatenated row-wise and
        returned on the CPU; other results come back as a list, one per chunk.
        Under ZeRO-3 every rank must call this with the same number of rows.
        """
        self.engine.eval()
        num_chunks = math.ceil(len(batch) / self.config.micro_batch_size)
        outputs = [fn(self.engine, batch_to(chunk, self.device)) for chunk in batch.split(num_chunks)]
        self.engine.train()
        if all(isinstance(out, torch.Tensor) for out in outputs):
            return torch.cat(outputs).cpu()
        if all(isinstance(out, dict) for out in outputs):
            return {key: torch.cat([out[key] for out in outputs]).cpu() for key in outputs[0]}
        return outputs

    @busy
    def weights(self) -> WeightUpdate | None:
        """Rank 0: the current weights for rollout workers (HF names), or only the LoRA A/B tensors.

        Call it on every rank (`group.map(LearnerWorker.weights)`): under ZeRO-3
        the parameters are gathered collectively. Other ranks return None.
        """
        module = self.engine.module
        if self.lora_scale is not None:
            from peft import get_peft_model_state_dict

            with self._gathered([p for p in module.parameters() if p.requires_grad]):
                adapter = get_peft_model_state_dict(module) if self.rank == 0 else {}
                tensors = {
                    name: tensor.detach().cpu().clone()
                    for name, tensor in adapter.items()
                    if ".lora_A." in name or ".lora_B." in name
                }
        else:
            tensors = self._state_dict()
        if self.rank != 0:
            return None
        return WeightUpdate(tensors=tensors, lora_scale=self.lora_scale, version=self.version)

    def steps_taken(self) -> int:
        """The version of the weights: optimizer steps taken (restored by `load`)."""
        return self.version

    @busy
    def export(self, path: str) -> str | None:
        """Rank 0 writes the model as a Hugging Face folder at `path` and returns `path`; other ranks return None.

        Safetensors, config, generation config and the tokenizer of the model
        training started from (rlcore.models.export). A LoRA run writes the merged
        model there and the adapter alone under `path/adapter`; training is not
        disturbed (the merge happens on a CPU copy). Call it on every rank
        (`group.map(LearnerWorker.export, path)`): under ZeRO-3 the weights are
        gathered collectively.
        """
        tensors = self._state_dict()
        if self.rank != 0:
            return None
        return str(save_hf_folder(path, self.model_path, tensors, self.model_config.dtype, self.lora, self.head))

    @busy
    def save(self, path: str) -> None:
        """Checkpoint model, optimizer, lr schedule and version under folder `path` (call on every rank)."""
        self.engine.save_checkpoint(path, client_state={"version": self.version})

    def load(self, path: str) -> int:
        """Restore the latest checkpoint under `path` (call on every rank); returns the restored version."""
        loaded, client_state = self.engine.load_checkpoint(path)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")
        self.version = int(client_state["version"])
        return self.version

    def _finite_on_all_ranks(self, loss: torch.Tensor) -> bool:
        finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def _state_dict(self) -> dict[str, torch.Tensor]:
        """Rank 0: every tensor of the model's state dict, whole and on the CPU (ZeRO-3 partitions gathered one
        at a time, on every rank); other ranks: {}."""
        module = self.engine.module
        params = dict(module.named_parameters(remove_duplicate=False))  # tied weights under both names
        tensors = {}
        for name, tensor in module.state_dict().items():
            param = params.get(name)
            with self._gathered([param] if param is not None else []):
                if self.rank == 0:
                    tensors[name] = (param if param is not None else tensor).detach().cpu().clone()
        return tensors

    def _gathered(self, params: list[torch.nn.Parameter]):
        """A context in which ZeRO-3-partitioned `params` are whole (a no-op below stage 3)."""
        if self.config.zero_stage < 3 or not params:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
