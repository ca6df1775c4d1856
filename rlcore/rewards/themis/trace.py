"""Themis's trace format: segments (context, tool call, observation, rationale) and their tokenisation.

Each segment is tokenised on its own and the ids are concatenated, in training and in scoring alike, so a
generated trace is read exactly as a recorded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlcore.rewards.tara import NO_TOOL_THOUGHT, TaraAnswer

OBSERVATION = "Observation:"
RATIONALE = "Rationale:"
SEGMENT_KINDS = ("context", "tool", "observation", "rationale")


@dataclass(frozen=True)
class Segment:
    kind: str
    """context (given), tool (the model's calls), observation (a tool's output), rationale (the model's)."""
    text: str


def context_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}\n"


def trace_segments(answer: TaraAnswer) -> list[Segment]:
    """A TARA answer's tool calls and rationale; their texts join to `rlcore.rewards.tara.render_trace(answer)`."""
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
