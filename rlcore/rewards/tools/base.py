"""What every tool shares: the `Tool` shape and the context a call may need.

Some TARA tools judge an answer rather than compute from their action input
alone: the calculator compares the answer's arithmetic with the golden answer,
and `code_run` (whose action input is literally "Same as the answer") runs the
answer under judgement against the question's asserts. `ToolContext` carries
those row fields; tools that do not need them ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToolContext:
    """Fields of the question being judged that a tool may read."""

    answer: str = ""
    """The answer under judgement (code_run runs it when the action input is "Same as the answer")."""

    reference_answer: str = ""
    """The golden answer, e.g. a GSM8K solution ending "#### 192" or just "192" (calculator)."""

    test_list: tuple[str, ...] = ()
    """Assert statements the answer's code must pass (code_run)."""


NO_CONTEXT = ToolContext()


class ToolError(ValueError):
    """Malformed action input or a failed tool call; `run_tool` turns it into an observation."""


class Tool(Protocol):
    """A tool the reward model can call: `run` returns the observation text."""

    name: str

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str: ...
