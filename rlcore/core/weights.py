"""What travels from the learner to the rollout workers after an update.

Full fine-tuning sends every weight under its Hugging Face name
(`model.layers.0.self_attn.q_proj.weight`, ...). LoRA sends only the adapter
(PEFT names, `...q_proj.lora_A.weight` / `lora_B`) and its scale; the rollout
side adds `scale * B @ A` to the base weights it keeps.

Through Ray's object store a WeightUpdate travels as numpy arrays (`__reduce__`):
Ray pickles a torch tensor (a copy on put and another on every get) but maps a
numpy array straight from shared memory, so every reader gets read-only tensors
over one shared copy (`launch/bench_rollout.py` measures it). bf16 travels as
int16 bits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


@dataclass
class WeightUpdate:
    tensors: dict[str, torch.Tensor]
    """Full weights (HF names) or LoRA A/B matrices (PEFT names)."""
    lora_scale: float | None = None
    """alpha / rank for a LoRA update; None for full weights."""
    version: int = 0
    """Learner step that produced these weights."""

    @property
    def is_lora(self) -> bool:
        return self.lora_scale is not None

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __reduce__(self):
        arrays, dtypes = {}, {}
        for name, tensor in self.tensors.items():
            tensor = tensor.detach().cpu().contiguous()
            dtypes[name] = str(tensor.dtype).removeprefix("torch.")
            arrays[name] = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
        return _from_arrays, (arrays, dtypes, self.lora_scale, self.version)


def _from_arrays(arrays: dict, dtypes: dict[str, str], lora_scale: float | None, version: int) -> WeightUpdate:
    """A WeightUpdate over the arrays `WeightUpdate.__reduce__` sent: read-only tensors without a copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-writable arrays: the receivers only read them
        tensors = {name: torch.from_numpy(array).view(getattr(torch, dtypes[name])) for name, array in arrays.items()}
    return WeightUpdate(tensors, lora_scale=lora_scale, version=version)


def merge_lora(base: dict[str, torch.Tensor], update: WeightUpdate) -> dict[str, torch.Tensor]:
    """Base weights with `scale * B @ A` added for every adapted module: W' = W + s·BA (Hu et al. 2021, eq. 3).

    Returns only the merged tensors, under the base model's names.
    """
    merged = {}
    for name, lora_a in update.tensors.items():
        if ".lora_A." not in name:
            continue
        lora_b = update.tensors[name.replace(".lora_A.", ".lora_B.")]
        module = name.split(".lora_A.")[0].removeprefix("base_model.model.")
        weight_name = module + ".weight"
        if weight_name not in base:
            raise KeyError(f"LoRA module {module!r} has no base weight {weight_name!r}")
        merged[weight_name] = base[weight_name] + update.lora_scale * (lora_b.float() @ lora_a.float()).to(
            base[weight_name].dtype
        )
    return merged
