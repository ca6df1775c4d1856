"""LearnerWorker: one data-parallel rank of a DeepSpeed-trained model.

N ranks (an `ActorGroup(..., distributed=True)`) form one torch.distributed
group. One optimizer step over a batch gives the same update however its rows
are laid out: on 1 rank in 4 micro-batches, on 2 ranks in 2 or on 4 ranks in 1
(tests/test_learner.py checks it).

Losses are not bound to the worker: `train_step` takes an objective, a plain
Python function `objective(model, micro_batch) -> (loss, stats)` that Ray
pickles (e.g. a `functools.partial` of a loss in an algorithm file). The loss
is a mean over the micro-batch's units, which the caller names (`MeanOver`):
response tokens for a token-mean loss such as PPO's, rows, or groups (an RRHF
query, a DPO pair). The learner weights each micro-batch's loss by its share
of the units of the whole step, all ranks together, so that the step minimises
the mean over all of them: a per-micro-batch token mean would otherwise weigh a
token of a short micro-batch more than one of a long micro-batch, and the
update would depend on the layout. The losses themselves stay plain means.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from typing import Any, Literal

import torch

from actors.vllm_ext import WeightGroup, broadcast_weights, weight_metadata
from rlcore.core.batch import Batch
from rlcore.core.config import LearnerConfig, ModelConfig
from rlcore.core.usage import busy
from rlcore.core.weights import WeightUpdate
from rlcore.models.export import save_hf_folder
from rlcore.models.loading import load_model, model_device
from rlcore.runtime.rendezvous import init_torch_distributed

Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, Any]]]
MeanOver = Literal["tokens", "rows", "groups"]
"""What an objective's loss is a mean over: response tokens, rows, or groups (`Batch.group`; kept whole)."""

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


def micro_batches(batch: Batch, max_rows: int, min_count: int = 1, whole_groups: bool = False) -> list[Batch]:
    """Chunks of `batch` of at most `max_rows` rows, at least `min_count` of them where the rows allow: near-equal
    runs of rows; or, with `whole_groups`, whole groups (`batch.group`) packed greedily in the order they first
    appear, their rows in batch order (a group of more than `max_rows` rows is a chunk of its own)."""
    if not whole_groups:
        return batch.split(min(len(batch), max(min_count, math.ceil(len(batch) / max_rows))))
    size = min(max_rows, math.ceil(len(batch) / min_count))
    packed: list[list[int]] = [[]]
    rows = 0
    for group, count in Counter(batch.group.tolist()).items():  # first-appearance order
        if packed[-1] and rows + count > size:
            packed.append([])
            rows = 0
        packed[-1].append(group)
        rows += count
    return [batch.select(torch.isin(batch.group, torch.tensor(groups))) for groups in packed]


def count_units(batch: Batch, mean_over: MeanOver) -> float:
    """How many of the units a loss averages over `batch` holds."""
    if mean_over == "tokens":
        return float(batch.response_mask.sum())
    if mean_over == "groups":
        return float(len(batch.group.unique()))
    return float(len(batch))


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
    """The DeepSpeed config dict a LearnerConfig stands for.

    Gradient accumulation is 1 for DeepSpeed: `train_step` sets the accumulation boundary itself (the number
    of micro-batches changes with the batch) and scales each loss itself, so DeepSpeed divides by nothing.
    """
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.micro_batch_size * world_size,
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
        self.weight_group: WeightGroup | None = None
        """Rank 0: the collective weight-update group with the engines that serve the policy (join_weight_group)."""
        self.device = model_device()
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
    def train_step(self, batch: Batch, objective: Objective, mean_over: MeanOver = "rows") -> dict[str, float]:
        """One optimizer step on this rank's share `batch` of the step's rows.

        The share runs in micro-batches of at most `micro_batch_size` rows (at
        least `grad_accumulation` of them), so memory is bound by the config,
        not by the batch. Every rank runs as many as the rank that needs the
        most (ZeRO-2 and 3 communicate in every backward, ZeRO-3 in every
        forward: unequal counts hang); the others add weightless copies of
        their first row (first group). `objective(model, micro_batch)` returns
        a mean over the micro-batch's `mean_over` units, and its loss is
        weighted by the micro-batch's share of the step's units, all ranks
        together (see the module docstring). With "groups", each rank's share
        must hold whole groups.

        Returns the objective's stats and its loss weighted the same way (means
        over the whole step, the same on every rank), plus `grad_norm` (before
        clipping, over all ranks), `lr` (the rate this step used) and `version`
        (steps taken, this one included).

        A non-finite loss on any rank skips the whole step on every rank (weights
        untouched, `skipped` = 1 in the result); more than `max_skipped_steps`
        skips in a row raise FloatingPointError.
        """
        self.engine.train()
        lr = self.engine.get_lr()[0]
        chunks, weights = self._weighted_micro_batches(batch, mean_over)
        totals: dict[str, float] = {}
        grad_norm = None
        skip = False
        for index, (micro, weight) in enumerate(zip(chunks, weights)):
            last = index == len(chunks) - 1
            self.engine.set_gradient_accumulation_boundary(last)  # reduce gradients and step after the last one
            loss, stats = objective(self.engine, batch_to(micro, self.device))
            skip = skip or not self._finite_on_all_ranks(loss)
            if skip:  # zero gradients keep DeepSpeed's collectives in step on every rank
                loss = sum((p * 0).sum() for p in self.engine.module.parameters() if p.requires_grad)
            for key, value in {"loss": loss, **stats}.items():
                value = value.detach() if isinstance(value, torch.Tensor) else value
                totals[key] = totals.get(key, 0.0) + (weight * float(value) if weight else 0.0)
            # DeepSpeed averages gradients over ranks: x world_size makes the step's gradient the sum of the
            # weighted losses' gradients, i.e. the gradient of the mean over the step's units
            self.engine.backward(loss * (weight * self.world_size), scale_wrt_gas=False)
        if skip:
            for group in self.engine.optimizer.param_groups:
                group["lr"] = 0.0  # AdamW with lr 0 leaves every weight as it is; the schedule resets lr
        elif self.config.zero_stage == 0:
            grad_norm = self._grad_norm()  # gradients are all-reduced now; stage 0 does not record the norm
        self.engine.step()
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
        keys = sorted(totals)  # the same objective on every rank: the same keys
        means = dict(zip(keys, self._all_reduce([totals[key] for key in keys])))
        return {**means, "grad_norm": float(grad_norm), "lr": lr, "version": self.version,
                "skipped": 0.0, "skipped_steps": float(self.skipped_steps)}

    @busy
    @torch.no_grad()
    def forward(self, batch: Batch, fn: Callable[[torch.nn.Module, Batch], Any]) -> Any:
        """`fn(model, chunk)` in eval mode without gradients, over chunks of at most `micro_batch_size` rows.

        Tensor results (or dicts of tensors) are concatenated row-wise and
        returned on the CPU; other results come back as a list, one per chunk.
        Under ZeRO-3 call it on every rank, with any number of rows each: every
        rank runs as many chunks as the rank with the most (the parameters are
        gathered in every forward), the extra ones on a copy of a row, their
        results dropped.
        """
        self.engine.eval()
        chunks = micro_batches(batch, self.config.micro_batch_size)
        padded = self._padded(chunks) if self.config.zero_stage == 3 else chunks
        outputs = [fn(self.engine, batch_to(chunk, self.device)) for chunk in padded][: len(chunks)]
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

    def join_weight_group(self, address: str, port: int, world_size: int) -> None:
        """Rank 0 joins the weight-update group at `address:port` as its rank 0, with the engines' workers as the
        other `world_size - 1` ranks (actors/vllm_ext.py); blocks until all have joined. Leaves the group it was
        in. Other ranks have nothing to join."""
        if self.rank != 0:
            return
        if self.weight_group is not None:
            self.weight_group.close()
        self.weight_group = WeightGroup(address, port, 0, world_size, self.device)

    def weight_metadata(self) -> list[tuple[str, torch.dtype, tuple]] | None:
        """Rank 0: (name, dtype, shape) of each tensor `broadcast_weights` sends, in order; other ranks: None.
        Call on every rank (ZeRO-3 gathers)."""
        metadata = weight_metadata(self._policy_weights())
        return metadata if self.rank == 0 else None

    @busy
    def broadcast_weights(self) -> int:
        """Rank 0 broadcasts the policy's weights to the weight-update group, tensor by tensor in the order of
        `weight_metadata` (ZeRO-3 gathers one parameter at a time; no copy of the model). Call on every rank,
        while every engine of the group runs its `receive_weights`. Returns the version sent."""
        weights = self._policy_weights()
        if self.rank == 0:
            broadcast_weights(self.weight_group, weights)
        else:
            for _ in weights:  # ZeRO-3: every rank takes part in each parameter's gather
                pass
        return self.version

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

    def _weighted_micro_batches(self, batch: Batch, mean_over: MeanOver) -> tuple[list[Batch], list[float]]:
        """This rank's micro-batches, as many as on every other rank, and the weight of each one's loss: its
        share of the `mean_over` units of the step, all ranks together (0 for the padding)."""
        whole_groups = mean_over == "groups"
        chunks = micro_batches(batch, self.config.micro_batch_size, self.config.grad_accumulation, whole_groups)
        units = [count_units(chunk, mean_over) for chunk in chunks]
        (total,) = self._all_reduce([sum(units)])
        padded = self._padded(chunks, whole_groups)
        return padded, [count / (total or 1.0) for count in units] + [0.0] * (len(padded) - len(chunks))

    def _padded(self, chunks: list[Batch], whole_groups: bool = False) -> list[Batch]:
        """`chunks`, then copies of the first one's first row (first group) up to the chunk count of the rank
        with the most, so that every rank runs the same collectives."""
        (most,) = self._all_reduce([len(chunks)], torch.distributed.ReduceOp.MAX)
        first = chunks[0]
        filler = first.select(first.group == first.group[0]) if whole_groups else first.select([0])
        return chunks + [filler] * (int(most) - len(chunks))

    def _all_reduce(self, values: list[float], op=torch.distributed.ReduceOp.SUM) -> list[float]:
        """`values` reduced element-wise over every rank by `op` (a sum unless told), in float64."""
        reduced = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(reduced, op=op)
        return reduced.tolist()

    def _finite_on_all_ranks(self, loss: torch.Tensor) -> bool:
        (finite,) = self._all_reduce([float(torch.isfinite(loss.detach()).all())], torch.distributed.ReduceOp.MIN)
        return finite == 1.0

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def _state_dict(self) -> dict[str, torch.Tensor]:
        """Rank 0: every tensor of the model's state dict, whole and on the CPU; other ranks: {}."""
        tensors = {}
        for name, tensor in self._named_weights():
            if self.rank == 0:
                tensors[name] = tensor.cpu().clone()
        return tensors

    def _named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor of the model's state dict, whole, one at a time (under ZeRO-3 each parameter is gathered
        on every rank while it is out: consume the iterator on every rank); tied weights under each name."""
        module = self.engine.module
        params = dict(module.named_parameters(remove_duplicate=False))
        for name, tensor in module.state_dict().items():
            param = params.get(name)
            with self._gathered([param] if param is not None else []):
                yield name, (param if param is not None else tensor).detach()

    def _policy_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """What an engine that serves the policy loads, under the base model's names, one tensor at a time:
        every weight; with LoRA, each adapted module's weight merged (W + s·BA, Hu et al. 2021) together with
        the other tensors of its parent module (vLLM rebuilds a fused layer such as qkv_proj from all its
        parts)."""
        if self.lora is None:
            yield from self._named_weights()
            return
        from peft.tuners.lora import LoraLayer

        module = self.engine.module
        adapted = {name: layer for name, layer in module.named_modules() if isinstance(layer, LoraLayer)}
        parents = tuple({name.rsplit(".", 1)[0] + "." for name in adapted})
        for name, param in module.named_parameters():
            if not name.startswith(parents) or ".lora_" in name:
                continue
            owner = name.rsplit(".", 2)[0] if ".base_layer." in name else None
            layer = adapted.get(owner)
            hf_name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if layer is None or not name.endswith(".weight"):
                with self._gathered([param]):
                    yield hf_name, param.detach()
                continue
            with self._gathered([param, *layer.lora_A.parameters(), *layer.lora_B.parameters()]):
                yield hf_name, param.detach() + layer.get_delta_weight(layer.active_adapters[0]).to(param.dtype)

    def _gathered(self, params: list[torch.nn.Parameter]):
        """A context in which ZeRO-3-partitioned `params` are whole (a no-op below stage 3)."""
        if self.config.zero_stage < 3 or not params:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
