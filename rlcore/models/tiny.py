"""Tiny models for laptops and CI: a small Qwen2 causal LM with a byte-level BPE tokenizer trained offline.

`tiny:<task>` (e.g. `tiny:arithmetic`) is built from `TinyModelSpec` on the
task's corpus, random-initialised and deterministic by seed, and cached as an
ordinary model folder (`AutoModelForCausalLM`, `AutoTokenizer` and vLLM load
it). `build_tiny_lm` does the same on any texts (Themis's TARA model).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlcore.data.tasks import get_task
from rlcore.models.cache import TINY_BUILD_CODE, build_key, cache_dir, is_built

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
# The chat template of tiny models: no role markers, the user turn is the task prompt
# itself ("12+7=") and the assistant turn its answer, closed by eos.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model. The defaults give ~1M parameters (see NOTES in the README)."""

    task: str = "arithmetic"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 320
    max_positions: int = 256
    seed: int = 0


def tiny_folder(spec: TinyModelSpec) -> Path:
    """The cache folder of a tiny model: keyed by its spec and the code that builds it."""
    return cache_dir() / "models" / f"tiny-{spec.task}-{build_key(asdict(spec), TINY_BUILD_CODE)}"


def build_tiny_model(spec: TinyModelSpec, force: bool = False) -> Path:
    """Build (or find in the cache) a tiny Qwen2 model and tokenizer for `spec.task`."""
    from filelock import FileLock

    folder = tiny_folder(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_built(folder) and not force:
            return folder
        tokenizer = bpe_tokenizer(get_task(spec.task).corpus(20_000), spec.vocab_size, use_regex=False)
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        save_tiny_lm(tokenizer, spec, partial)
        (partial / "rlcore_spec.json").write_text(json.dumps(asdict(spec), indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    return folder


def bpe_tokenizer(texts: list[str], vocab_size: int, use_regex: bool):
    """A byte-level BPE tokenizer trained on `texts`; digits stay single tokens, any text still encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="left", chat_template=TINY_CHAT_TEMPLATE)


def save_tiny_lm(tokenizer, spec, folder: str | Path) -> Path:
    """A random-initialised tiny Qwen2 LM of `spec`'s shape (seeded by `spec.seed`) saved with `tokenizer`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, torch_dtype="float32")
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_lm(texts: list[str], spec, folder: str | Path) -> Path:
    """Train a tokenizer of `spec.vocab_size` on `texts` and save a random-initialised tiny LM with it."""
    return save_tiny_lm(bpe_tokenizer(texts, spec.vocab_size, use_regex=True), spec, folder)
