"""`ThemisModel`: a causal LM plus a linear value head on the final token, saved as one folder (the LM's
own files, its tokenizer, `value_head.safetensors`), and scoring of complete traces."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from rlcore.rewards.reward_model import last_token_values, right_pad
from rlcore.rewards.themis.trace import Segment, encode_segments

VALUE_HEAD_FILE = "value_head.safetensors"
THEMIS_FILE = "rlcore_themis.json"


class ThemisModel(nn.Module):
    """A causal LM and a linear value head on the final hidden state of the last real token."""

    def __init__(self, lm: nn.Module, value_head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        if value_head is None:
            value_head = nn.Linear(hidden, 1)
            nn.init.normal_(value_head.weight, std=1.0 / math.sqrt(hidden + 1))
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input_ids, attention_mask [B, T] -> logits [B, T, V], rewards [B] (fp32)."""
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.lm.get_output_embeddings()(hidden), self._rewards(hidden, attention_mask)

    @torch.no_grad()
    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards alone (no logits): [B], on the inputs' device (moved to the model's to compute)."""
        device = self.value_head.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._rewards(hidden, attention_mask).cpu()

    def _rewards(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.value_head(last_token_values(hidden, attention_mask)).squeeze(-1).float()

    def save(self, folder: str | Path, tokenizer=None, info: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        save_file({"weight": self.value_head.weight.detach().contiguous(),
                   "bias": self.value_head.bias.detach().contiguous()}, str(folder / VALUE_HEAD_FILE))
        (folder / THEMIS_FILE).write_text(json.dumps(info or {}, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> ThemisModel:
        folder = Path(folder)
        if not (folder / VALUE_HEAD_FILE).exists():
            raise FileNotFoundError(f"{folder} is not a Themis reward model: it has no {VALUE_HEAD_FILE} "
                                    "(train one with `rlcore train-themis`)")
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tensors = load_file(str(folder / VALUE_HEAD_FILE))
        head = nn.Linear(tensors["weight"].shape[1], 1)
        head.load_state_dict(tensors)
        return cls(lm, head.to(dtype)).eval()


@torch.no_grad()
def score_segments(model: ThemisModel, tokenizer, examples: list[list[Segment]], batch_size: int = 32,
                   max_length: int = 512) -> torch.Tensor:
    """Rewards of complete examples (segments + eos), e.g. recorded traces (teacher forcing): [N]."""
    model.eval()
    rows = [encode_segments(tokenizer, segments, add_eos=True)[0][-max_length:] for segments in examples]
    out = [model.rewards(*right_pad(rows[i : i + batch_size], tokenizer.pad_token_id))
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


@dataclass(frozen=True)
class TinyLMSpec:
    """Shape of Themis's tiny Qwen2 LM, whose byte-level BPE tokenizer is trained on the TARA rows' text
    (`rlcore.models.tiny.build_tiny_lm`)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_positions: int = 512
    seed: int = 0
