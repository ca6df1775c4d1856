"""A trained policy as a Hugging Face folder that `transformers` and `vllm` load.

    <folder>/config.json, generation_config.json, model.safetensors   the policy (a LoRA adapter merged in)
    <folder>/tokenizer.json, tokenizer_config.json, chat_template...   the tokenizer of the model training started from
    <folder>/adapter/adapter_config.json, adapter_model.safetensors   a LoRA run only: the adapter alone (peft)

The learner gathers its weights (ZeRO-3 partitions included) and its rank 0
calls `save_hf_folder` with them (`LearnerWorker.export`). The folder is
written next to its final place and renamed into it, so a run killed while
exporting leaves the previous export (or none), never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from rlcore.models.loading import load_model, resolve_model

ADAPTER = "adapter"
"""Subfolder of a LoRA run's export that holds the adapter alone."""


def save_hf_folder(folder: str | Path, base: str, state_dict: dict[str, torch.Tensor], dtype: str = "float32",
                   lora: Any = None, head: str = "causal_lm") -> Path:
    """Write `state_dict` (the training module's tensors, whole) as a Hugging Face folder at `folder`.

    `base` is the model training started from: its config, generation config and
    tokenizer are copied, and a fresh CPU copy of it takes the weights (names and
    shapes must match exactly). With `lora` (a peft LoraConfig) the copy is wrapped
    like the learner's, the adapter is saved under `adapter/`, and the merged
    model (W + s·BA, peft's merge_and_unload) is the folder's model.
    """
    from peft import get_peft_model
    from transformers import AutoTokenizer

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):  # initialising the copy must not move the learner's random stream
        model = load_model(base, head=head, dtype=dtype)
        if lora is not None:
            model = get_peft_model(model, lora)
    model.load_state_dict(state_dict, strict=True)
    if lora is not None:
        model.save_pretrained(partial / ADAPTER)
        model = model.merge_and_unload()
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(resolve_model(base)).save_pretrained(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder
