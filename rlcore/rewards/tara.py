"""TARA rows (the Themis paper's Tool-Augmented Reward dAtaset): loading, tool calls, training traces.

One JSON object per line (see data/tara/README.md):

    {"id", "question", "pos_answer": {"answer", "score", "actions", "score_agent": {"explanation", "score"}},
     "neg_answer": {...}, "test_list": [...] (code rows only)}

`actions` is either one call as an object {"Thought", "Action", "Action Input",
"Observation"} or several as a string of "Thought:/Action:/Action Input:/Observation:"
lines; "Thought: Do I need to use a tool? No" (then "Finished.") means no call.
Both become a tuple of `ToolCall`s.

`render_trace` writes the text a tool-augmented reward model is trained on
(LM loss), one labelled field per line:

    Thought: I need to search what day is 64 days after 2023-03-04.
    Action: Calendar.target_day
    Action Input: 2023-03-04, 64
    Observation: 2023-05-07
    Thought: ...            (the next call, if any)
    Rationale: <score_agent.explanation>

An answer with no call has the single line "Thought: Do I need to use a tool? No"
before its rationale. Field values are written as recorded: a multi-line value
(code, a weather report) keeps its newlines, and the next field still starts on
a line of its own with its label.

`measure_agreement` replays every recorded call of the live tools (calculator,
Calendar.*, code_run) through `rlcore.rewards.tools` and compares observations; see
`observations_agree` for what counts as the same.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rlcore.rewards.tools import TOOLS, ReplayTool, Tool, ToolContext, run_tool
from rlcore.rewards.tools.calculator import check_annotations

NO_TOOL_THOUGHT = "Do I need to use a tool? No"
TRAINING_FILES = ("calculator_train.jsonl", "calendar_train.jsonl", "code_train.jsonl",
                  "multi_tools_train.jsonl", "hh_rlhf_train.jsonl")


class TaraFormatError(ValueError):
    """A TARA row that cannot be read; the message starts with "file:line:"."""


@dataclass(frozen=True)
class ToolCall:
    thought: str
    action: str
    action_input: str
    observation: str


@dataclass(frozen=True)
class TaraAnswer:
    answer: str
    score: float
    tool_calls: tuple[ToolCall, ...]
    rationale: str
    """score_agent.explanation."""


@dataclass(frozen=True)
class TaraRow:
    id: str
    question: str
    pos: TaraAnswer
    neg: TaraAnswer
    test_list: tuple[str, ...]
    source: str
    """Where the row was read, "path:line"."""

    def tool_context(self, answer: TaraAnswer) -> ToolContext:
        """What the tools need to judge `answer`: the positive answer serves as the reference
        (in calculator rows it is the GSM8K solution whose "#### N" is the golden number)."""
        return ToolContext(answer=answer.answer, reference_answer=self.pos.answer, test_list=self.test_list)


# ---- parsing ----------------------------------------------------------------------------

_LABEL = re.compile(r"^(Thought|Action Input|Action|Observation)[ \t]*:[ \t]?", re.MULTILINE)
_CALL_FIELDS = {"Thought": "thought", "Action": "action", "Action Input": "action_input",
                "Observation": "observation"}


def parse_actions(actions: dict | str) -> tuple[ToolCall, ...]:
    """The tool calls of a TARA `actions` value, in either form; ValueError if malformed."""
    if isinstance(actions, dict):
        missing = [key for key in _CALL_FIELDS if key not in actions]
        if missing:
            raise ValueError(f"actions object lacks {', '.join(map(repr, missing))}")
        return (ToolCall(*(str(actions[key]).strip() for key in _CALL_FIELDS)),)
    if not isinstance(actions, str):
        raise ValueError(f"actions must be an object or a string, got {type(actions).__name__}")
    return tuple(_calls_from_text(actions))


def _calls_from_text(text: str) -> Iterator[ToolCall]:
    labels = list(_LABEL.finditer(text))
    if not labels or text[: labels[0].start()].strip():
        raise ValueError(f"actions text does not start with a 'Thought:'/'Action:' line: {text[:60]!r}")
    fields: dict[str, str] = {}
    for index, label in enumerate(labels):
        end = labels[index + 1].start() if index + 1 < len(labels) else len(text)
        name, value = _CALL_FIELDS[label[1]], text[label.end() : end].strip()
        if name == "thought" or name in fields:
            yield from _finished_call(fields)
            fields = {}
        fields[name] = value
    yield from _finished_call(fields)


def _finished_call(fields: dict[str, str]) -> Iterator[ToolCall]:
    if "action" not in fields and "action_input" not in fields and "observation" not in fields:
        return  # a thought alone: "Do I need to use a tool? No", or the closing thought
    missing = [label for label, name in _CALL_FIELDS.items() if name != "thought" and name not in fields]
    if missing:
        raise ValueError(f"a tool call lacks {', '.join(map(repr, missing))}: {fields}")
    yield ToolCall(fields.get("thought", ""), fields["action"], fields["action_input"], fields["observation"])


def _answer(record: dict) -> TaraAnswer:
    return TaraAnswer(
        answer=str(record["answer"]),
        score=float(record["score"]),
        tool_calls=parse_actions(record["actions"]),
        rationale=str(record["score_agent"]["explanation"]).strip(),
    )


def load_tara(path: str | os.PathLike, limit: int | None = None) -> list[TaraRow]:
    """The rows of one TARA JSON-lines file (the first `limit` rows if given); blank lines are skipped."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            source = f"{path}:{line_number}"
            try:
                record = json.loads(line)
                rows.append(TaraRow(
                    id=str(record["id"]),
                    question=str(record["question"]),
                    pos=_answer(record["pos_answer"]),
                    neg=_answer(record["neg_answer"]),
                    test_list=tuple(record.get("test_list", ())),
                    source=source,
                ))
            except json.JSONDecodeError as error:
                raise TaraFormatError(f"{source}: not valid JSON: {error}") from error
            except KeyError as error:
                raise TaraFormatError(f"{source}: missing field {error}") from error
            except (TypeError, ValueError) as error:
                raise TaraFormatError(f"{source}: {error}") from error
    return rows


# ---- traces and replays -----------------------------------------------------------------

def render_trace(answer: TaraAnswer) -> str:
    """The Thought/Action/Action Input/Observation lines of an answer, then its Rationale."""
    lines = []
    for call in answer.tool_calls:
        lines += [f"Thought: {call.thought}", f"Action: {call.action}",
                  f"Action Input: {call.action_input}", f"Observation: {call.observation}"]
    if not answer.tool_calls:
        lines.append(f"Thought: {NO_TOOL_THOUGHT}")
    lines.append(f"Rationale: {answer.rationale}")
    return "\n".join(lines)


def replay_tools(rows: Iterable[TaraRow]) -> dict[str, ReplayTool]:
    """A `ReplayTool` for every tool the rows call that does not run here (history_weather, ...)."""
    replays: dict[str, ReplayTool] = {}
    for row in rows:
        for answer in (row.pos, row.neg):
            for call in answer.tool_calls:
                if call.action not in TOOLS:
                    replays.setdefault(call.action, ReplayTool(call.action)).record(call.action_input,
                                                                                     call.observation)
    return replays


# ---- agreement of the live tools with the recorded observations ----------------------

@dataclass(frozen=True)
class ReplayedCall:
    """One recorded tool call run again through `rlcore.rewards.tools`."""

    row: TaraRow
    side: str
    """"pos" or "neg"."""
    call: ToolCall
    observed: str

    @property
    def agrees(self) -> bool:
        return observations_agree(self.call.observation, self.observed)


_NUMBER = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?!\w|\.\d|-\d)")
_SANDBOX_NOTE = re.compile(r" Sandbox: .*$", re.DOTALL)
_FAILED_REASON = re.compile(r"\bFailed reason: (.*)$", re.DOTALL)
# Failure texts that Python versions word differently (TARA's tool ran Python <= 3.9):
_REASON_SPELLINGS = (
    (re.compile(r"^timed out\b.*"), "timed out"),
    (re.compile(r".* \(<string>, line \d+\)$"), "syntax error"),  # message and line differ by version
    (re.compile(r"^maximum recursion depth exceeded\b.*"), "maximum recursion depth exceeded"),
    (re.compile(r"^integer (division or )?modulo by zero$"), "integer modulo by zero"),
)


def _canonical_reason(reason: str) -> str:
    for pattern, canonical in _REASON_SPELLINGS:
        if pattern.fullmatch(reason):
            return canonical
    return reason


def normalise_observation(text: str) -> str:
    """The form two observations are compared in (see `observations_agree`)."""
    text = _SANDBOX_NOTE.sub("", re.sub(r"\s+", " ", text).strip())
    reasons = _FAILED_REASON.search(text)
    if reasons:
        canonical = sorted({_canonical_reason(reason.strip()) for reason in reasons[1].split("; ")})
        text = text[: reasons.start(1)] + "; ".join(canonical)
    return _NUMBER.sub(lambda number: repr(float(number[0])), text)


def observations_agree(recorded: str, observed: str) -> bool:
    """Whether two observations say the same, after normalising:

    * whitespace: runs of spaces and newlines are one space, ends stripped;
    * numbers: every stand-alone decimal number is compared as a float ("192" = "192.0"
      = "192.00"); numbers inside dates such as 2023-05-07 are left alone;
    * code_run failure reasons: compared as a set (TARA joined a Python set, in no fixed
      order), with texts that Python versions word differently made equal: any SyntaxError
      "... (<string>, line N)" counts as "syntax error" (3.9's "invalid syntax (<string>,
      line 4)" is 3.11's "'(' was never closed (<string>, line 2)"), "timed out ..." as
      "timed out", the recursion-limit and modulo-by-zero texts likewise;
    * the " Sandbox: ..." sentence our code_run adds is ignored.
    """
    return normalise_observation(recorded) == normalise_observation(observed)


def replay_recorded_calls(data_dir: str | os.PathLike, limit: int | None = None,
                          tools: Mapping[str, Tool] = TOOLS, workers: int | None = None) -> list[ReplayedCall]:
    """Runs every recorded call of a live tool (one in `tools`) in the TARA training files again.

    `limit` keeps the first rows of each file; calls run on `workers` threads (code_run
    calls are subprocesses, so they overlap)."""
    jobs = []
    for file_name in TRAINING_FILES:
        path = Path(data_dir, file_name)
        if not path.exists():
            continue
        for row in load_tara(path, limit):
            for side, answer in (("pos", row.pos), ("neg", row.neg)):
                jobs += [(row, side, answer, call) for call in answer.tool_calls if call.action in tools]

    def replay(job) -> ReplayedCall:
        row, side, answer, call = job
        observed = run_tool(call.action, call.action_input, row.tool_context(answer), tools)
        return ReplayedCall(row, side, call, observed)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        return list(pool.map(replay, jobs))


_GOLDEN_DECIMAL = re.compile(r"####\s*(-?\d+\.\d+)")


def explain_disagreement(replayed: ReplayedCall) -> str | None:
    """Why a recorded observation differs from ours, when it is a known fault of the recording or
    a known difference of environment; None when unexplained."""
    recorded, observed, call = replayed.call.observation, replayed.observed, replayed.call
    if call.action == "calculator":
        golden = _GOLDEN_DECIMAL.search(replayed.row.pos.answer)
        if golden and observations_agree(recorded, check_annotations(call.action_input,
                                                                     float(golden[1].replace(".", "")))):
            return "recorded with the golden answer's decimal point dropped ('#### 8.00' read as 800)"
        if re.search(r"[A-Za-z_]\w*\(", call.action_input):
            return "recorded calculator (numexpr) accepted function calls such as ceil(); ours refuses names"
    if call.action == "code_run" and "timed out" in observed and "timed out" not in recorded:
        return "times out here (test_cpu_s) but finished within TARA's 3 s: machine speed"
    return None


@dataclass
class ToolAgreement:
    tool: str
    agree: int = 0
    total: int = 0
    identical: int = 0
    """Calls whose observations are equal up to whitespace alone, without the other normalisations."""
    explained: Counter = field(default_factory=Counter)
    """Disagreements by the reason `explain_disagreement` gives."""
    inconsistent_records: int = 0
    """Calls whose identical input (and context) was recorded with different observations."""
    unexplained: list[ReplayedCall] = field(default_factory=list)


def agreement_report(replayed: list[ReplayedCall]) -> dict[str, ToolAgreement]:
    """Per-tool agreement, with the disagreements sorted into explained and unexplained."""
    recorded_for: dict[tuple, set[str]] = {}
    for item in replayed:
        key = (item.call.action, item.call.action_input, item.row.tool_context(_side(item)))
        recorded_for.setdefault(key, set()).add(normalise_observation(item.call.observation))
    report: dict[str, ToolAgreement] = {}
    for item in replayed:
        tool = report.setdefault(item.call.action, ToolAgreement(item.call.action))
        tool.total += 1
        tool.identical += item.call.observation.split() == item.observed.split()
        key = (item.call.action, item.call.action_input, item.row.tool_context(_side(item)))
        tool.inconsistent_records += len(recorded_for[key]) > 1
        if item.agrees:
            tool.agree += 1
            continue
        reason = explain_disagreement(item)
        if reason is None:
            tool.unexplained.append(item)
        else:
            tool.explained[reason] += 1
    return report


def _side(item: ReplayedCall) -> TaraAnswer:
    return item.row.pos if item.side == "pos" else item.row.neg


def measure_agreement(data_dir: str | os.PathLike, limit: int | None = None,
                      tools: Mapping[str, Tool] = TOOLS) -> dict[str, tuple[int, int]]:
    """{tool: (calls whose replayed observation agrees with the recorded one, calls)}, over the
    first `limit` rows of each training file (all rows if None)."""
    report = agreement_report(replay_recorded_calls(data_dir, limit, tools))
    return {tool: (agreement.agree, agreement.total) for tool, agreement in report.items()}
