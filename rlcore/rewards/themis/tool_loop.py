"""Themis scoring with tools: generate until the model writes "Observation:" or eos, parse its action, run
the tool, insert the observation, go on (at most `max_calls` calls); then the value head reads the final
token. A malformed action, an unknown tool, a failing or slow tool all become "Error: ..." observations,
never exceptions."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from rlcore.rewards.themis.model import ThemisModel, score_segments
from rlcore.rewards.themis.trace import (
    OBSERVATION,
    Segment,
    context_text,
    encode_segments,
    render_segments,
    split_generated,
)
from rlcore.rewards.tools import TOOLS, Tool, ToolContext, parse_action, run_tool

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
        out = lm.generate(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device), max_new_tokens=max_new_tokens,
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
