"""Tools for a Themis-style tool-augmented reward model.

The reward model writes

    Thought: I need to search what day of the week is 2008-06-16.
    Action: Calendar.week_day
    Action Input: 2008-06-16

the reward worker runs the tool and appends "Observation: Monday", and the
model goes on to its rationale. `parse_action` reads the model's text,
`run_tool` runs a tool and never raises: an unknown tool, a malformed input or
a failing tool becomes an observation starting with "Error:" that the model
reads like any other.

`TOOLS` holds the tools that run here: calculator, the three Calendar tools
and code_run (sandboxed). Tools that need the internet exist only as
`ReplayTool`s built from recorded TARA observations
(`rlcore.rewards.tara.replay_tools`); pass `tools={**TOOLS, **replays}` to use them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from rlcore.rewards.tools.base import NO_CONTEXT, Tool, ToolContext, ToolError
from rlcore.rewards.tools.calculator import Calculator
from rlcore.rewards.tools.code_run import CodeRun
from rlcore.rewards.tools.dates import DayDifference, TargetDay, WeekDay
from rlcore.rewards.tools.replay import ReplayTool
from rlcore.rewards.tools.sandbox import SandboxLimits, SandboxResult, TestOutcome, run_tests

__all__ = [
    "NO_CONTEXT", "TOOLS", "ParsedAction", "ReplayTool", "SandboxLimits", "SandboxResult", "TestOutcome",
    "Tool", "ToolContext", "ToolError", "observe", "parse_action", "run_tests", "run_tool",
]

TOOLS: dict[str, Tool] = {
    tool.name: tool for tool in (Calculator(), WeekDay(), DayDifference(), TargetDay(), CodeRun())
}


class ParsedAction(NamedTuple):
    thought: str
    action: str
    action_input: str


_ACTION = re.compile(
    r"Action\s*:[ \t]*(?P<action>[^\n]*?)[ \t]*\n\s*Action Input\s*:[ \t]*(?P<input>.*?)\s*(?=\n\s*Observation\s*:|\Z)",
    re.DOTALL,
)
_THOUGHT = re.compile(r"Thought\s*:\s*(?P<thought>.*?)\s*(?=\n\s*Action\s*:|\Z)", re.DOTALL)


def parse_action(text: str) -> ParsedAction | None:
    """The first `Action:` / `Action Input:` pair in model output and the thought before it; None if absent.

    The action input runs to the next "Observation:" line or the end of the text, so it
    may span lines (code); one pair of surrounding double quotes is removed, as TARA does.
    """
    match = _ACTION.search(text)
    if match is None or not match["action"].strip():
        return None
    thoughts = list(_THOUGHT.finditer(text, 0, match.start()))
    thought = thoughts[-1]["thought"] if thoughts else ""
    action_input = match["input"]
    if len(action_input) >= 2 and action_input[0] == action_input[-1] == '"':
        action_input = action_input[1:-1]
    return ParsedAction(thought, match["action"].strip(), action_input)


def run_tool(name: str, action_input: str, context: ToolContext = NO_CONTEXT,
             tools: Mapping[str, Tool] = TOOLS) -> str:
    """The observation for one tool call; every failure is an "Error: ..." observation, never an exception."""
    tool = tools.get(name.strip()) if isinstance(name, str) else None
    if tool is None:
        return f"Error: unknown tool {name!r}; available: {', '.join(sorted(tools))}"
    if not isinstance(action_input, str):
        return f"Error: {tool.name}: the action input must be text, got {type(action_input).__name__}"
    try:
        return tool.run(action_input, context)
    except ToolError as error:
        return f"Error: {tool.name}: {error}"
    except Exception as error:  # noqa: BLE001 - a tool failure is an observation for the model
        return f"Error: {tool.name} failed: {type(error).__name__}: {error}"


def observe(model_output: str, context: ToolContext = NO_CONTEXT, tools: Mapping[str, Tool] = TOOLS) -> str:
    """Parses model output and runs its action: the text to put after "Observation: "."""
    parsed = parse_action(model_output)
    if parsed is None:
        return "Error: no 'Action:' line followed by an 'Action Input:' line was found"
    return run_tool(parsed.action, parsed.action_input, context, tools)
