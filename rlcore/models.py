"""Models: tiny offline models for laptops and CI, real Hugging Face models anywhere else.

A model is named by a string. `sft:<task>` is the SFT warm start of a tiny
model on that task (`rlcore.sft`, trained once and cached). `tiny:<task>` (e.g. `tiny:arithmetic`) builds a small
Qwen2 causal LM with a byte-level BPE tokenizer trained on that task's corpus,
random-initialised and deterministic by seed, and caches it on disk as an
ordinary model folder (`AutoModelForCausalLM`, `AutoTokenizer` and vLLM load it).
Anything else is passed through unchanged: a local folder or a Hub name.

Three heads on one backbone, all standard transformers classes:
    policy / reference   AutoModelForCausalLM
    reward model         AutoModelForSequenceClassification, num_labels=1 (last token)
    critic (values)      AutoModelForTokenClassification, num_labels=1 (every token)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

TINY_PREFIX = "tiny:"
SFT_PREFIX = "sft:"
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
# The chat template of tiny models: no role markers, the user turn is the task prompt
# itself ("12+7=") and the assistant turn its answer, closed by eos.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model. The defaults give ~1M parameters (see shared/NOTES.md)."""

    task: str = "arithmetic"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 320
    max_positions: int = 256
    seed: int = 0


def cache_dir() -> Path:
    """Where built models live: $RLCORE_CACHE, else ~/.cache/rlcore."""
    return Path(os.environ.get("RLCORE_CACHE", Path.home() / ".cache" / "rlcore"))


def resolve_model(name_or_path: str) -> str:
    """A loadable path or Hub name: builds (once) and returns the folder of a `tiny:` or `sft:` model."""
    if name_or_path.startswith(SFT_PREFIX):
        from rlcore.sft import SFTConfig, sft_checkpoint

        task = name_or_path[len(SFT_PREFIX) :]
        return sft_checkpoint(SFTConfig(model=TINY_PREFIX + task, task=task))
    if name_or_path.startswith(TINY_PREFIX):
        return str(build_tiny_model(TinyModelSpec(task=name_or_path[len(TINY_PREFIX) :])))
    return name_or_path


def build_tiny_model(spec: TinyModelSpec, force: bool = False) -> Path:
    """Build (or find in the cache) a tiny Qwen2 model and tokenizer for `spec.task`."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, Qwen2Config

    key = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    folder = cache_dir() / "models" / f"tiny-{spec.task}-{key}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists() and not force:
            return folder
        tokenizer = train_tokenizer(spec.task, spec.vocab_size)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            torch_dtype="float32",
        )
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "rlcore_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return folder


def train_tokenizer(task: str, vocab_size: int, corpus_size: int = 20_000):
    """A byte-level BPE tokenizer trained on the task's corpus; digits stay single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlcore.tasks import get_task

    corpus = get_task(task).corpus(corpus_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def load_tokenizer(name_or_path: str):
    """The model's tokenizer, left-padding, with a pad token (eos if the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, head: str = "causal_lm", dtype: str = "float32"):
    """Load a model with one of three heads: "causal_lm", "reward" (sequence scalar) or "value" (token scalar)."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    classes = {
        "causal_lm": AutoModelForCausalLM,
        "reward": AutoModelForSequenceClassification,
        "value": AutoModelForTokenClassification,
    }
    if head not in classes:
        raise ValueError(f"unknown model head {head!r}; allowed: {sorted(classes)}")
    path = resolve_model(name_or_path)
    kwargs = {"dtype": getattr(torch, dtype)}
    if head != "causal_lm":
        # no dropout in the scalar heads (transformers' token head defaults to 0.1): values and rewards
        # must not depend on a random stream, or training and resumed runs differ
        config = AutoConfig.from_pretrained(path, num_labels=1)
        config.classifier_dropout = 0.0  # (passed to from_pretrained, transformers 5 drops this key)
        kwargs["config"] = config
    model = classes[head].from_pretrained(path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def format_prompt(tokenizer, question: str) -> str:
    """The question as a user turn of the model's chat template, ready for the answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer, questions: list[str]) -> list[list[int]]:
    """Token ids of each question formatted with the chat template (special tokens come from the template)."""
    texts = [format_prompt(tokenizer, q) for q in questions]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that follow the attention mask, as generation assigns them to left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model, batch) -> torch.Tensor:
    """Logits predicting each response token: [B, R, V]."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
    )
    return out.logits[:, batch.prompt_length - 1 : -1]


def token_logprobs(logits: torch.Tensor, batch) -> torch.Tensor:
    """log π(response token) at each response position, fp32, zero on padding: [B, R]."""
    targets = batch.input_ids[:, batch.prompt_length :]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logps * batch.response_mask


def response_values(value_model, batch) -> torch.Tensor:
    """Critic values V(s_t) for the state before each response token: [B, R], zero on padding."""
    out = value_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
    )
    values = out.logits.squeeze(-1)[:, batch.prompt_length - 1 : -1]
    return values.float() * batch.response_mask
