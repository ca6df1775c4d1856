"""Replays of tools that need the internet (history_weather, Google Search, WikiSearch, Translator, ...).

A `ReplayTool` answers only from observations recorded in TARA data, keyed by
the tool name and the normalised action input (whitespace collapsed, case
folded, spaces around commas removed). For any other input it says so:

    Replay: no recorded observation for history_weather with input 'Paris, 2023-05-07'

`rlcore.rewards.tara.replay_tools(rows)` builds them from loaded TARA rows.
"""

from __future__ import annotations

import re

from rlcore.rewards.tools.base import NO_CONTEXT, ToolContext


def replay_key(action_input: str) -> str:
    """The normalised action input a recorded observation is filed under."""
    collapsed = re.sub(r"\s+", " ", action_input).strip().casefold()
    return re.sub(r"\s*,\s*", ",", collapsed)


class ReplayTool:
    """A tool whose observations come from recorded data, never from the network."""

    def __init__(self, name: str):
        self.name = name
        self.recorded: dict[str, str] = {}
        self.conflicts = 0
        """Inputs recorded again with a different observation (the first one is kept)."""

    def record(self, action_input: str, observation: str) -> None:
        key = replay_key(action_input)
        if key in self.recorded and self.recorded[key] != observation:
            self.conflicts += 1
        self.recorded.setdefault(key, observation)

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        observation = self.recorded.get(replay_key(action_input))
        if observation is None:
            return f"Replay: no recorded observation for {self.name} with input {action_input.strip()!r}"
        return observation

    def __repr__(self) -> str:
        return f"ReplayTool({self.name!r}, {len(self.recorded)} recorded observations)"
