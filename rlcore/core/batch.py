"""The one batch type that crosses every actor boundary.

A `Batch` holds B samples, each a prompt followed by a response:

    input_ids       [B, P + R]  prompt left-padded to P, response right-padded to R
    attention_mask  [B, P + R]  1 on real tokens
    response_mask   [B, R]      1 on response tokens that count (0 on padding)

Every per-token quantity (logprobs, values, advantages, ...) is [B, R] and lines
up with the response tokens; per-sample quantities (rewards, ...) are [B].
`group` [B] says which prompt a sample answers, so the n samples of one prompt
can be compared (RRHF ranking, group baselines, best-vs-worst pairs).
Python-side data (prompt and response texts, anything else) lives in `info`,
one list entry per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

TOKEN_FIELDS = ("logprobs", "ref_logprobs", "values", "advantages", "returns")


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    group: torch.Tensor
    rewards: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    info: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.input_ids.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.shape[0] != b:
                raise ValueError(f"Batch.{f.name} has {value.shape[0]} rows, input_ids has {b}")
            if f.name in TOKEN_FIELDS and value is not None and value.shape != self.response_mask.shape:
                raise ValueError(
                    f"Batch.{f.name} has shape {tuple(value.shape)}, "
                    f"expected response shape {tuple(self.response_mask.shape)}"
                )
        for key, values in self.info.items():
            if len(values) != b:
                raise ValueError(f"Batch.info[{key!r}] has {len(values)} entries, input_ids has {b} rows")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        """P: the number of (left-padded) prompt positions."""
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    def select(self, index: torch.Tensor | list[int] | slice) -> Batch:
        """The rows at `index` (a slice, a list of row numbers or a bool/long tensor)."""
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            rows = index.nonzero().flatten().tolist()
        else:
            rows = [int(i) for i in index]
        picked = torch.tensor(rows, dtype=torch.long)
        changes = {
            f.name: getattr(self, f.name)[picked]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        changes["info"] = {k: [v[i] for i in rows] for k, v in self.info.items()}
        return replace(self, **changes)

    def split(self, num_chunks: int) -> list[Batch]:
        """`num_chunks` contiguous chunks of near-equal size (for data-parallel ranks or micro-batches)."""
        if not 1 <= num_chunks <= len(self):
            raise ValueError(f"cannot split a batch of {len(self)} rows into {num_chunks} chunks")
        bounds = torch.linspace(0, len(self), num_chunks + 1).round().long().tolist()
        return [self.select(slice(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> list[Batch]:
        """Shuffled minibatches of `size` rows (the last may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        return [self.select(order[i : i + size]) for i in range(0, len(self), size)]

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate batches row-wise, re-padding prompts (left) and responses (right) to the longest.

        Group ids are kept as they are: give batches disjoint group ids before
        concatenating if their prompts differ.
        """
        if not batches:
            raise ValueError("Batch.cat needs at least one batch")
        prompt_len = max(b.prompt_length for b in batches)
        response_len = max(b.response_mask.shape[1] for b in batches)
        padded = [_pad_to(b, prompt_len, response_len) for b in batches]
        out = {}
        for f in fields(Batch):
            values = [getattr(b, f.name) for b in padded]
            if f.name == "info":
                keys = set(values[0])
                if any(set(v) != keys for v in values):
                    raise ValueError("Batch.cat: batches carry different info keys")
                out["info"] = {k: [x for v in values for x in v[k]] for k in keys}
            elif all(v is None for v in values):
                out[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"Batch.cat: field {f.name} is set in some batches only")
            else:
                out[f.name] = torch.cat(values)
        return Batch(**out)


def _pad_to(batch: Batch, prompt_len: int, response_len: int) -> Batch:
    left = prompt_len - batch.prompt_length
    right = response_len - batch.response_mask.shape[1]
    if left == 0 and right == 0:
        return batch

    def pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (left, right), value=0)

    changes = {
        "input_ids": pad(batch.input_ids, left, right),
        "attention_mask": pad(batch.attention_mask, left, right),
        "response_mask": pad(batch.response_mask, 0, right),
    }
    for name in TOKEN_FIELDS:
        value = getattr(batch, name)
        if value is not None:
            changes[name] = pad(value, 0, right)
    return replace(batch, **changes)


def make_batch(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_token_id: int,
    group: list[int] | None = None,
    logprobs: list[list[float]] | None = None,
    info: dict[str, list] | None = None,
) -> Batch:
    """Pad token-id lists into a Batch (prompts left, responses right)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    b = len(prompt_ids)
    prompt_len = max(len(p) for p in prompt_ids)
    response_len = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((b, prompt_len + response_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((b, prompt_len + response_len), dtype=torch.long)
    response_mask = torch.zeros((b, response_len), dtype=torch.float32)
    token_logprobs = torch.zeros((b, response_len)) if logprobs is not None else None
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start = prompt_len - len(p)
        input_ids[i, start:prompt_len] = torch.tensor(p, dtype=torch.long)
        input_ids[i, prompt_len : prompt_len + len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, start : prompt_len + len(r)] = 1
        response_mask[i, : len(r)] = 1
        if token_logprobs is not None:
            token_logprobs[i, : len(r)] = torch.tensor(logprobs[i], dtype=torch.float32)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        group=torch.tensor(group if group is not None else list(range(b)), dtype=torch.long),
        logprobs=token_logprobs,
        info=info or {},
    )
