"""Arithmetic: integer expressions such as "12+7=" -> "19", "3-9=" -> "-6", "2+3*4=" -> "14".

Prompt: operands and operators with no spaces, then "=". Operands are integers
0..max_value written without leading zeros ("07+1=" is malformed); operators
come from `ops`, a subset of "+-*"; "*" binds tighter than "+" and "-", which
go left to right. The answer is the value as a plain integer, "-" when
negative. The default task (two operands, "+-", 0..99) has 100 * 100 * 2 =
20,000 prompts, of which ~1,000 are held out.
"""

from __future__ import annotations

import itertools
import random
import re

from rlcore.data.tasks import MAX_LISTED, Task, near_miss

_PROMPT = re.compile(r"(?:0|[1-9][0-9]*)(?:[-+*](?:0|[1-9][0-9]*))*=")
_TOKEN = re.compile(r"[0-9]+|[-+*]")


def evaluate(operands: list[int], operators: list[str]) -> int:
    """The value of operands[0] operators[0] operands[1] ..., with "*" before "+" and "-"."""
    total, sign, term = 0, 1, operands[0]
    for operator, operand in zip(operators, operands[1:]):
        if operator == "*":
            term *= operand
        else:
            total += sign * term
            sign, term = (1 if operator == "+" else -1), operand
    return total + sign * term


def render(operands: list[int] | tuple[int, ...], operators: list[str] | tuple[str, ...]) -> str:
    """The prompt of an expression: "12+7=" for operands [12, 7] and operators ["+"]."""
    return str(operands[0]) + "".join(op + str(value) for op, value in zip(operators, operands[1:])) + "="


class ArithmeticTask(Task):
    """Integer arithmetic over `min_operands`..`max_operands` operands in 0..`max_value`, operators `ops`."""

    name = "arithmetic"

    def __init__(
        self, min_operands: int = 2, max_operands: int = 2, max_value: int = 99, ops: str = "+-", seed: int = 0
    ) -> None:
        if not ops or not set(ops) <= set("+-*") or len(set(ops)) != len(ops):
            raise ValueError(f"ops={ops!r} must be a non-empty subset of '+-*' without repeats")
        if min_operands < 1:
            raise ValueError(f"min_operands={min_operands} must be >= 1")
        if max_operands < min_operands:
            raise ValueError(f"max_operands={max_operands} must be >= min_operands={min_operands}")
        if max_value < 1:
            raise ValueError(f"max_value={max_value} must be >= 1")
        self.min_operands = min_operands
        self.max_operands = max_operands
        self.max_value = max_value
        self.ops = ops
        self.seed = seed

    def answer(self, prompt: str) -> str | None:
        """The value of the expression, or None if the prompt is malformed or outside this task's ranges."""
        if not _PROMPT.fullmatch(prompt):
            return None
        tokens = _TOKEN.findall(prompt)
        operand_texts, operators = tokens[::2], tokens[1::2]
        if not self.min_operands <= len(operand_texts) <= self.max_operands:
            return None
        if any(op not in self.ops for op in operators):
            return None
        if any(len(text) > len(str(self.max_value)) or int(text) > self.max_value for text in operand_texts):
            return None
        return str(evaluate([int(text) for text in operand_texts], operators))

    def alphabet(self) -> str:
        """Digits, the operators and "="."""
        return "".join(sorted(set("0123456789=" + self.ops)))

    def _random_prompt(self, rng: random.Random) -> str:
        """A random expression: a random operand count, operands and operators."""
        count = rng.randint(self.min_operands, self.max_operands)
        operands = [rng.randint(0, self.max_value) for _ in range(count)]
        operators = [rng.choice(self.ops) for _ in range(count - 1)]
        return render(operands, operators)

    def _wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """Off by one or ten, the sign flipped, or a digit changed; never negative without "-"."""
        return str(near_miss(int(self._answer_of(prompt)), rng, signed="-" in self.ops))

    def _all_prompts(self) -> list[str] | None:
        """Every expression, in a fixed order, if there are at most MAX_LISTED."""
        counts = range(self.min_operands, self.max_operands + 1)
        size = sum((self.max_value + 1) ** count * len(self.ops) ** (count - 1) for count in counts)
        if size > MAX_LISTED:
            return None
        values = range(self.max_value + 1)
        return [
            render(operands, operators)
            for count in counts
            for operands in itertools.product(values, repeat=count)
            for operators in itertools.product(self.ops, repeat=count - 1)
        ]
