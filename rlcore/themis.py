"""Themis: a tool-augmented reward model (Li et al., "Tool-Augmented Reward Modeling", ICLR 2024).

The reward model reads a question and an answer, then writes its own tool calls
and a rationale; the tools' observations are inserted by the caller; a scalar
head on the final token gives the reward:

    Question: How many days pass between 2015-11-05 and 2011-01-11?       context (given)
    Answer: The difference between 2015-11-05 and 2011-01-11 is 279
    Thought: I need to search how many days is the difference ...       tool       (generated)
    Action: Calendar.day_difference
    Action Input: 2015-11-05, 2011-01-11
    Observation:                                                           (generation stops here)
     1759                                                                 observation (the tool ran)
    Rationale: The answer ... contradicts the tool's 1759 days ...<eos>   rationale  (generated)
                                                                   ^ reward = value_head(h_eos)

The trace lines are `rlcore.tara.render_trace`'s. `ThemisModel` is a causal LM
plus a linear value head on the final hidden state, saved as one folder (the
LM's own files, its tokenizer, `value_head.safetensors`). Training on TARA rows
minimises the paper's total loss

    L = rank_weight · L_RM + tool_weight · L_tool + rationale_weight · L_rationale

with L_RM = −log σ(r_pos − r_neg) (InstructGPT eq. 1) and the L_tool / L_rationale
token-mean NLL of the tool-call text (Thought / Action / Action Input and the
"Observation:" label, not the observations the tools wrote) and of the
rationale (with its eos), on both answers of a pair. With `use_tools=False` the
same model reads only "Question: ...\\nAnswer: ...\\n<eos>" and is trained by
L_RM alone: a plain reward model, the paper's baseline. With `rationale=False`
(the paper's "w/o L_T" ablation) the trace ends at the last observation: the
model writes its calls, then eos, and the head reads the final token there.

Scoring (`score_with_tools`) interleaves generation and tools: generate until
the model writes "Observation:" or eos; parse its action (`rlcore.tools`), run
the tool, insert " <observation>\\n", and go on, at most `max_calls` calls. A
malformed action, an unknown tool, a failing or slow tool all become
observations ("Error: ..."), never exceptions.

Each segment is tokenised on its own and the ids are concatenated, in training
and in scoring alike, so a generated trace is read exactly as a recorded one.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rlcore.losses import pairwise_reward_loss, sequence_logprobs, sft_loss
from rlcore.reward_model import last_token_values, right_pad, split_rows
from rlcore.tara import NO_TOOL_THOUGHT, TaraAnswer, TaraRow, load_tara
from rlcore.tools import TOOLS, Tool, ToolContext, parse_action, run_tool

OBSERVATION = "Observation:"
RATIONALE = "Rationale:"
SEGMENT_KINDS = ("context", "tool", "observation", "rationale")
VALUE_HEAD_FILE = "value_head.safetensors"
THEMIS_FILE = "rlcore_themis.json"


# ---------------------------------------------------------------------------- trace formatting


@dataclass(frozen=True)
class Segment:
    kind: str
    """context (given), tool (the model's calls), observation (a tool's output), rationale (the model's)."""
    text: str


def context_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}\n"


def trace_segments(answer: TaraAnswer) -> list[Segment]:
    """A TARA answer's tool calls and rationale; their texts join to `rlcore.tara.render_trace(answer)`."""
    segments = []
    for call in answer.tool_calls:
        segments.append(Segment("tool", f"Thought: {call.thought}\nAction: {call.action}\n"
                                        f"Action Input: {call.action_input}\n{OBSERVATION}"))
        segments.append(Segment("observation", f" {call.observation}\n"))
    if not answer.tool_calls:
        segments.append(Segment("tool", f"Thought: {NO_TOOL_THOUGHT}\n"))
    segments.append(Segment("rationale", f"{RATIONALE} {answer.rationale}"))
    return segments


def example_segments(question: str, answer: TaraAnswer, use_tools: bool, rationale: bool = True) -> list[Segment]:
    """What the model is trained on for one answer: the context, then (with tools) the trace and (with
    `rationale`) the rationale."""
    context = Segment("context", context_text(question, answer.answer))
    if not use_tools:
        return [context]
    trace = trace_segments(answer)
    return [context, *(trace if rationale else trace[:-1])]


def split_generated(text: str) -> list[Segment]:
    """Generated text after the last observation: the tool part, then the rationale from "Rationale:" on."""
    at = text.find(RATIONALE)
    if at < 0:
        return [Segment("tool", text)] if text else []
    return [s for s in (Segment("tool", text[:at]), Segment("rationale", text[at:])) if s.text]


def encode_segments(tokenizer, segments: Sequence[Segment], add_eos: bool) -> tuple[list[int], list[str]]:
    """Token ids (bos, each segment tokenised on its own, optionally eos) and each token's segment kind.

    The bos is "context". The eos is written by the model (so it learns to stop) unless the example is
    the context alone: "rationale" after a rationale, "tool" after the model's calls or an observation."""
    ids, kinds = [tokenizer.bos_token_id], ["context"]
    for segment in segments:
        piece = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        ids += piece
        kinds += [segment.kind] * len(piece)
    if add_eos:
        last = segments[-1].kind if segments else "context"
        ids.append(tokenizer.eos_token_id)
        kinds.append("tool" if last == "observation" else last)
    return ids, kinds


def render_segments(segments: Sequence[Segment]) -> str:
    return "".join(segment.text for segment in segments)


# ---------------------------------------------------------------------------- the model


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
        """Rewards alone (no logits): [B]."""
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._rewards(hidden, attention_mask)

    def _rewards(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.value_head(last_token_values(hidden, attention_mask)).squeeze(-1).float()

    def save(self, folder: str | Path, tokenizer=None, info: dict | None = None) -> Path:
        from safetensors.torch import save_file

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
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

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


# ---------------------------------------------------------------------------- a tiny model for TARA text


@dataclass(frozen=True)
class TinyLMSpec:
    """A tiny Qwen2 causal LM with a byte-level BPE tokenizer trained on the given texts."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_positions: int = 512
    seed: int = 0


def build_tiny_lm(texts: list[str], spec: TinyLMSpec, folder: str | Path) -> Path:
    """Train a byte-level BPE tokenizer on `texts` (digits single tokens; any text still encodes) and save a
    random-initialised Qwen2 LM with it to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from rlcore.models import SPECIAL_TOKENS, TINY_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", padding_side="left", chat_template=TINY_CHAT_TEMPLATE)
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


# ---------------------------------------------------------------------------- scoring with tools


GenerateFn = Callable[[list[list[int]], list[str]], list[tuple[str, bool]]]
"""(token ids of each prefix, stop strings) -> (generated text, ended on eos) per prefix."""


def hf_generator(lm, tokenizer, max_new_tokens: int) -> GenerateFn:
    """Greedy transformers `generate` on left-padded prefixes, stopping at any of the stop strings."""

    @torch.no_grad()
    def generate(prefixes: list[list[int]], stop: list[str]) -> list[tuple[str, bool]]:
        lm.eval()
        width = max(len(p) for p in prefixes)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prefixes])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes])
        kwargs = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
        out = lm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                          do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          **kwargs)
        results = []
        for row in out[:, width:].tolist():
            ended = tokenizer.eos_token_id in row
            if ended:
                row = row[: row.index(tokenizer.eos_token_id)]
            results.append((tokenizer.decode(row, skip_special_tokens=True), ended))
        return results

    return generate


def call_tool(text: str, context: ToolContext, tools: Mapping[str, Tool], timeout_s: float) -> str:
    """The observation for the last tool call in `text` (the model's output up to "Observation:").

    Never raises: no parsable action, an unknown tool, a tool error and a tool that does not answer
    within `timeout_s` are all "Error: ..." observations."""
    parsed = parse_action(text)
    if parsed is None:
        return "Error: no 'Action:' line followed by an 'Action Input:' line was found"
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(run_tool(parsed.action, parsed.action_input,
                                                                     context, tools)), daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not result:
        return f"Error: {parsed.action} did not answer within {timeout_s:g} s"
    return result[0]


@dataclass
class ToolTrace:
    """One scored answer: the segments the model read and wrote, its reward and what happened."""

    segments: list[Segment]
    reward: float = 0.0
    calls: int = 0
    finished: bool = False
    """The model ended on eos (not cut by the token budget)."""

    @property
    def text(self) -> str:
        return render_segments(self.segments)


def run_tool_traces(contexts: list[str], generate: GenerateFn, tokenizer, tool_contexts: list[ToolContext],
                    tools: Mapping[str, Tool] = TOOLS, max_calls: int = 3, timeout_s: float = 10.0,
                    max_length: int = 512) -> list[ToolTrace]:
    """Let the model write each trace, running its tool calls in between (no scoring).

    Round by round: the rows still writing generate until "Observation:" or eos; a row that stopped at
    "Observation:" gets the tool's observation (after `max_calls` calls, an error saying so) and goes on.
    At most `max_calls + 2` rounds; a row longer than `max_length` tokens stops."""
    traces = [ToolTrace([Segment("context", c)]) for c in contexts]
    active = list(range(len(traces)))
    for round_index in range(max_calls + 2):
        if not active:
            break
        stop = [OBSERVATION] if round_index <= max_calls else []
        prefixes = [encode_segments(tokenizer, traces[i].segments, add_eos=False)[0] for i in active]
        outputs = generate(prefixes, stop)
        still_active = []
        for i, (text, ended) in zip(active, outputs):
            trace = traces[i]
            at = text.find(OBSERVATION)
            if stop and at >= 0 and not ended:
                call_text = text[: at + len(OBSERVATION)]
                trace.segments.append(Segment("tool", call_text))
                if trace.calls < max_calls:
                    observation = call_tool(call_text, tool_contexts[i], tools, timeout_s)
                    trace.calls += 1
                else:
                    observation = f"Error: no more tool calls allowed (the limit is {max_calls})"
                trace.segments.append(Segment("observation", f" {observation.strip()}\n"))
                if len(encode_segments(tokenizer, trace.segments, add_eos=False)[0]) < max_length:
                    still_active.append(i)
            else:
                trace.segments += split_generated(text)
                trace.finished = ended
        active = still_active
    return traces


def score_with_tools(model: ThemisModel, tokenizer, questions: list[str], answers: list[str],
                     tool_contexts: list[ToolContext] | None = None, tools: Mapping[str, Tool] = TOOLS,
                     max_calls: int = 3, max_new_tokens: int = 192, timeout_s: float = 10.0,
                     batch_size: int = 32, max_length: int = 512, generate: GenerateFn | None = None
                     ) -> list[ToolTrace]:
    """Themis scoring: the model writes its tool calls (tools run in between) and rationale, then the value
    head on the final token gives each answer's reward."""
    tool_contexts = tool_contexts or [ToolContext(answer=a) for a in answers]
    generate = generate or hf_generator(model.lm, tokenizer, max_new_tokens)
    traces = []
    for start in range(0, len(questions), batch_size):
        chunk = range(start, min(start + batch_size, len(questions)))
        traces += run_tool_traces([context_text(questions[i], answers[i]) for i in chunk], generate, tokenizer,
                                  [tool_contexts[i] for i in chunk], tools, max_calls, timeout_s, max_length)
    rewards = score_segments(model, tokenizer, [t.segments for t in traces], batch_size, max_length)
    for trace, reward in zip(traces, rewards.tolist()):
        trace.reward = reward
    return traces


# ---------------------------------------------------------------------------- training


@dataclass
class ThemisConfig:
    """`rlcore train-themis`: a tool-augmented reward model on TARA rows (or, use_tools=false, a plain one)."""

    data: str = "../shared/data/tara/calendar_train.jsonl"
    """A TARA JSON-lines file."""
    heldout_fraction: float = 0.2
    """Share of the rows held out (seeded shuffle)."""
    split_seed: int = 0
    """Seed of the train / held-out split."""
    use_tools: bool = True
    """true: Themis (trace + rationale, LM and ranking losses); false: a plain RM on question + answer."""
    rationale: bool = True
    """false: Themis without the rationale (the paper's w/o L_T ablation): the reward is read after the
    last observation."""
    model: str = "tiny"
    """tiny: a tiny LM with a tokenizer trained on the training rows' text (shape below); else a causal LM
    folder or Hub name."""
    tiny: TinyLMSpec = field(default_factory=TinyLMSpec)
    """Shape of the tiny LM."""
    epochs: int = 40
    """Passes over the training pairs."""
    batch_size: int = 16
    """Pairs per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to 10 %)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    rank_weight: float = 1.0
    """Weight of the pairwise ranking loss L_RM."""
    tool_weight: float = 1.0
    """Weight of the LM loss on the tool-call text L_tool."""
    rationale_weight: float = 1.0
    """Weight of the LM loss on the rationale L_rationale."""
    max_length: int = 512
    """Longest sequence in tokens."""
    max_calls: int = 3
    """Tool calls allowed per answer when scoring."""
    max_new_tokens: int = 256
    """Tokens generated per round when scoring."""
    tool_timeout_s: float = 10.0
    """Seconds a tool call may take before it becomes an error observation."""
    eval_generate: bool = True
    """Also measure held-out accuracy with generated traces and real tool calls (slower)."""
    output_dir: str = ""
    """Where the model goes; empty = runs/themis-<timestamp>."""
    seed: int = 0
    """Seed of initialisation and data order."""
    threads: int = 0
    """Torch threads (0 = all cores)."""

    def __post_init__(self) -> None:
        from rlcore.config import check_range

        check_range("heldout_fraction", self.heldout_fraction, 0.01, 0.9)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("max_calls", self.max_calls, 0)
        for key in ("rank_weight", "tool_weight", "rationale_weight"):
            check_range(key, getattr(self, key), 0)


@dataclass
class ThemisResult:
    path: str
    use_tools: bool
    rationale: bool
    train_pairs: int
    heldout_pairs: int
    steps: int
    seconds: float
    heldout_accuracy_recorded: float
    """Held-out pairwise accuracy scoring the recorded traces (teacher forcing; the recorded rationale
    already says which answer is right, so this is not a fair test of a tool RM)."""
    heldout_accuracy_generated: float | None
    """Held-out pairwise accuracy when the model writes its calls, the real tools run and it writes its
    rationale (None if not measured; for a plain RM it equals the recorded one)."""
    heldout_tool_calls_valid: float | None
    """Share of generated calls whose observation was not an error."""
    final_losses: dict


@dataclass
class PairBatch:
    input_ids: torch.Tensor
    """[2B, T]: the B chosen examples, then the B rejected ones, right-padded."""
    attention_mask: torch.Tensor
    tool_mask: torch.Tensor
    """[2B, T-1], aligned with the next-token targets input_ids[:, 1:]."""
    rationale_mask: torch.Tensor


def make_pair_batch(tokenizer, rows: list[TaraRow], use_tools: bool, max_length: int,
                    rationale: bool = True) -> PairBatch:
    examples = [example_segments(row.question, row.pos, use_tools, rationale) for row in rows]
    examples += [example_segments(row.question, row.neg, use_tools, rationale) for row in rows]
    encoded = [encode_segments(tokenizer, segments, add_eos=True) for segments in examples]
    encoded = [(ids[-max_length:], kinds[-max_length:]) for ids, kinds in encoded]
    input_ids, attention_mask = right_pad([ids for ids, _ in encoded], tokenizer.pad_token_id)
    kinds = [kinds + ["pad"] * (input_ids.shape[1] - len(kinds)) for _, kinds in encoded]
    tool = torch.tensor([[k == "tool" for k in row[1:]] for row in kinds])
    rationale = torch.tensor([[k == "rationale" for k in row[1:]] for row in kinds])
    return PairBatch(input_ids, attention_mask, tool, rationale)


def themis_loss(model: ThemisModel, batch: PairBatch, rank_weight: float, tool_weight: float,
                rationale_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """L = rank_weight·L_RM + tool_weight·L_tool + rationale_weight·L_rationale (Themis, eq. 4)."""
    logits, rewards = model(batch.input_ids, batch.attention_mask)
    token_logps = sequence_logprobs(logits[:, :-1], batch.input_ids[:, 1:], batch.attention_mask[:, 1:].bool())
    chosen, rejected = rewards.chunk(2)
    rank = pairwise_reward_loss(chosen, rejected)
    tool = sft_loss(token_logps, batch.tool_mask)
    rationale = sft_loss(token_logps, batch.rationale_mask)
    loss = rank_weight * rank + tool_weight * tool + rationale_weight * rationale
    stats = {"loss": loss.item(), "rank_loss": rank.item(), "tool_loss": tool.item(),
             "rationale_loss": rationale.item(), "train_accuracy": ((chosen > rejected).float().mean().item())}
    return loss, stats


def pair_accuracy(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Share of pairs with pos > neg; ties count ½."""
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in zip(pos, neg)) / max(1, len(pos))


def recorded_accuracy(model: ThemisModel, tokenizer, rows: list[TaraRow], use_tools: bool,
                      max_length: int = 512, rationale: bool = True) -> float:
    """Held-out pairwise accuracy on the recorded traces (teacher forcing)."""
    pos = score_segments(model, tokenizer, [example_segments(r.question, r.pos, use_tools, rationale)
                                            for r in rows], max_length=max_length)
    neg = score_segments(model, tokenizer, [example_segments(r.question, r.neg, use_tools, rationale)
                                            for r in rows], max_length=max_length)
    return pair_accuracy(pos.tolist(), neg.tolist())


def generated_accuracy(model: ThemisModel, tokenizer, rows: list[TaraRow], config: ThemisConfig,
                       tools: Mapping[str, Tool] = TOOLS) -> tuple[float, float, list[ToolTrace]]:
    """(pairwise accuracy, share of calls without an error observation, traces) with generated traces and
    real tool calls; traces are the pos answers then the neg answers."""
    questions = [r.question for r in rows] * 2
    answers = [r.pos.answer for r in rows] + [r.neg.answer for r in rows]
    contexts = [r.tool_context(r.pos) for r in rows] + [r.tool_context(r.neg) for r in rows]
    traces = score_with_tools(model, tokenizer, questions, answers, contexts, tools, config.max_calls,
                              config.max_new_tokens, config.tool_timeout_s, max_length=config.max_length)
    rewards = [t.reward for t in traces]
    observations = [s.text.strip() for t in traces for s in t.segments if s.kind == "observation"]
    valid = sum(not o.startswith("Error:") for o in observations) / max(1, len(observations))
    return pair_accuracy(rewards[: len(rows)], rewards[len(rows) :]), valid, traces


def variant_name(config: ThemisConfig) -> str:
    if not config.use_tools:
        return "plain"
    return "tools" if config.rationale else "tools, no rationale"


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_themis(config: ThemisConfig, rows: list[TaraRow] | None = None) -> ThemisResult:
    """Train on the training split of `config.data` (or `rows`), evaluate on the held-out split, save."""
    from transformers import AutoModelForCausalLM

    from rlcore.models import load_tokenizer

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = rows if rows is not None else load_tara(config.data)
    train, heldout = split_rows(rows, config.heldout_fraction, config.split_seed)
    out = Path(config.output_dir or f"runs/themis-{time.strftime('%Y%m%d-%H%M%S')}")
    if config.model == "tiny":
        texts = [render_segments(example_segments(r.question, a, True)) for r in train for a in (r.pos, r.neg)]
        lm_path = build_tiny_lm(texts, config.tiny, out / "init")
    else:
        from rlcore.models import resolve_model

        lm_path = resolve_model(config.model)
    tokenizer = load_tokenizer(str(lm_path))
    torch.manual_seed(config.seed)
    model = ThemisModel(AutoModelForCausalLM.from_pretrained(lm_path, dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=0.01)
    steps_per_epoch = -(-len(train) // config.batch_size)
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config.warmup_steps, total))
    order_rng = random.Random(config.seed)
    start = time.time()
    recent: list[dict] = []
    progress = tqdm(total=total, desc=f"train-themis ({variant_name(config)})", unit="step")
    for _ in range(config.epochs):
        order = list(range(len(train)))
        order_rng.shuffle(order)
        for first in range(0, len(order), config.batch_size):
            model.train()
            batch = make_pair_batch(tokenizer, [train[i] for i in order[first : first + config.batch_size]],
                                    config.use_tools, config.max_length, config.rationale)
            loss, stats = themis_loss(model, batch, config.rank_weight, config.tool_weight, config.rationale_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            recent = (recent + [stats])[-steps_per_epoch:]
            progress.update(1)
            progress.set_postfix(loss=f"{stats['loss']:.3f}", rank=f"{stats['rank_loss']:.3f}")
    progress.close()
    final_losses = {key: sum(s[key] for s in recent) / len(recent) for key in recent[0]}
    recorded = recorded_accuracy(model, tokenizer, heldout, config.use_tools, config.max_length, config.rationale)
    generated, valid = None, None
    if config.use_tools and config.eval_generate:
        generated, valid, traces = generated_accuracy(model, tokenizer, heldout, config)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "heldout_traces.jsonl", "w") as file:
            for trace in traces:
                file.write(json.dumps({"reward": trace.reward, "calls": trace.calls, "finished": trace.finished,
                                       "text": trace.text}) + "\n")
    elif not config.use_tools:
        generated = recorded
    result = ThemisResult(str(out), config.use_tools, config.rationale, len(train), len(heldout), total,
                          round(time.time() - start, 1), recorded, generated, valid, final_losses)
    model.save(out, tokenizer, {"config": asdict(config), "result": asdict(result)})
    return result


Config = ThemisConfig


def train(config: ThemisConfig) -> dict:
    """Entry point of `rlcore train-themis`."""
    result = train_themis(config)
    generated = ("n/a" if result.heldout_accuracy_generated is None
                 else f"{result.heldout_accuracy_generated:.1%}")
    print(f"reward model ({variant_name(config)}) on {config.data}: held-out pairwise accuracy {generated} "
          f"(recorded traces: {result.heldout_accuracy_recorded:.1%}; {result.heldout_pairs} pairs) "
          f"in {result.steps} steps, {result.seconds:.0f} s; saved to {result.path}")
    return asdict(result)
