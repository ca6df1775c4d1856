"""What travels from the learner to the rollout workers after an update.

Full fine-tuning sends every weight under its Hugging Face name
(`model.layers.0.self_attn.q_proj.weight`, ...). LoRA sends only the adapter
(PEFT names, `...q_proj.lora_A.weight` / `lora_B`) and its scale; the rollout
side adds `scale * B @ A` to the base weights it keeps.
"""

from __future__ import annotations

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
