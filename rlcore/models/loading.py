"""Loading models and tokenizers by name, and the token-level functions every role shares.

A model is named by a string. `tiny:<task>` and `sft:<task>` name models that
rlcore builds itself (`rlcore.models.build`, an explicit step run by the
driver or `rlcore build`); loading one that is not built yet is a clear
error, never a hidden build. Anything else is passed through unchanged: a
local folder or a Hugging Face name.

Three heads on one backbone, all standard transformers classes:
    policy / reference   AutoModelForCausalLM
    reward model         AutoModelForSequenceClassification, num_labels=1 (last token)
    critic (values)      AutoModelForTokenClassification, num_labels=1 (every token)
"""

from __future__ import annotations

import torch

from rlcore.models.cache import SFT_PREFIX, TINY_PREFIX, is_built, sft_folder
from rlcore.models.tiny import TinyModelSpec, tiny_folder


class ModelNotBuilt(FileNotFoundError):
    """A `tiny:` or `sft:` model was asked for before it was built."""


def built_folder(name: str):
    """The cache folder that a `tiny:` / `sft:` name stands for (built or not); None for any other name."""
    if name.startswith(SFT_PREFIX):
        return sft_folder(name[len(SFT_PREFIX) :])
    if name.startswith(TINY_PREFIX):
        return tiny_folder(TinyModelSpec(task=name[len(TINY_PREFIX) :]))
    return None


def resolve_model(name_or_path: str) -> str:
    """A loadable path or Hub name. A `tiny:` / `sft:` name must have been built (`rlcore build NAME`)."""
    folder = built_folder(name_or_path)
    if folder is None:
        return name_or_path
    if not is_built(folder):
        raise ModelNotBuilt(f"model {name_or_path!r} is not built yet (expected in {folder}); build it with "
                            f"`rlcore build {name_or_path}` (algorithms build their models before they start)")
    return str(folder)


def load_tokenizer(name_or_path: str):
    """The model's tokenizer, left-padding, with a pad token (eos if the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_device() -> torch.device:
    """Where this process puts its models: the GPU Ray assigned it (the role's num_gpus), else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


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


def format_prompt(tokenizer, prompt, chat_template: bool = True) -> str:
    """A prompt ready for the answer: a question (str) as a user turn, or a list of chat turns
    [{"role", "content"}], through the model's chat template; the raw text when `chat_template` is false or
    the tokenizer has no template (turns joined by newlines)."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "\n".join(turn["content"] for turn in turns)


def encode_prompts(tokenizer, prompts: list, chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt formatted by `format_prompt`; special tokens come from the template, or from
    the tokenizer (e.g. bos) for raw text."""
    templated = chat_template and bool(tokenizer.chat_template)
    return [tokenizer(format_prompt(tokenizer, p, chat_template), add_special_tokens=not templated)["input_ids"]
            for p in prompts]


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


LOGPROB_CHUNK_ELEMENTS = 2**26
"""Logits `token_logprobs` casts to fp32 at a time (256 MiB): a few positions of a long response × a large
vocabulary, rather than the whole [B, R, V] in fp32."""


def token_logprobs(logits: torch.Tensor, batch, chunk_elements: int = LOGPROB_CHUNK_ELEMENTS) -> torch.Tensor:
    """log π(response token) at each response position, fp32, zero on padding: [B, R].

    At most `chunk_elements` logits are ever held in fp32. Logits that fit go
    through one fp32 log_softmax; larger ones through `ChunkedTokenLogProbs`,
    log_softmax(z)[y] = z_y − logsumexp(z) for a chunk of positions at a time,
    in the forward and again in the backward: a log_softmax of the whole
    `logits.float()` would hold two fp32 copies of [B, R, V] for the backward,
    the largest tensors of a training step with a large vocabulary.
    """
    targets = batch.input_ids[:, batch.prompt_length :]
    if logits.numel() <= chunk_elements:
        logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logps * batch.response_mask
    positions = max(1, chunk_elements // max(1, logits.shape[0] * logits.shape[-1]))
    return ChunkedTokenLogProbs.apply(logits, targets, positions) * batch.response_mask


class ChunkedTokenLogProbs(torch.autograd.Function):
    """log softmax(logits)[targets] in fp32, `positions` response positions at a time: [B, R, V], [B, R] -> [B, R].

    Saves only the logits (alive anyway) and the fp32 logsumexp [B, R]; the
    backward recomputes each chunk's softmax: ∂ log p_y / ∂ z_v = 1[v = y] − softmax(z)_v,
    cast to the logits' dtype once per chunk.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, positions: int) -> torch.Tensor:
        logsumexp = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        logps = torch.empty_like(logsumexp)
        for start in range(0, targets.shape[1], positions):
            span = slice(start, start + positions)
            chunk = logits[:, span].float()  # [B, positions, V]: the only fp32 copy alive
            logsumexp[:, span] = torch.logsumexp(chunk, dim=-1)
            logps[:, span] = chunk.gather(-1, targets[:, span, None]).squeeze(-1) - logsumexp[:, span]
        ctx.save_for_backward(logits, targets, logsumexp)
        ctx.positions = positions
        return logps

    @staticmethod
    def backward(ctx, grad_logps: torch.Tensor):
        logits, targets, logsumexp = ctx.saved_tensors
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for start in range(0, targets.shape[1], ctx.positions):
            span = slice(start, start + ctx.positions)
            grad = torch.exp(logits[:, span].float() - logsumexp[:, span, None]) * -grad_logps[:, span, None]
            grad.scatter_add_(-1, targets[:, span, None], grad_logps[:, span, None])
            grad_logits[:, span] = grad
        return grad_logits, None, None


def response_logprobs(model, batch) -> torch.Tensor:
    """log π(response token) under `model` at each response position, fp32, zero on padding: [B, R]."""
    return token_logprobs(response_logits(model, batch), batch)


def response_values(value_model, batch) -> torch.Tensor:
    """Critic values V(s_t) for the state before each response token: [B, R], zero on padding."""
    out = value_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids(batch.attention_mask),
    )
    values = out.logits.squeeze(-1)[:, batch.prompt_length - 1 : -1]
    return values.float() * batch.response_mask
