"""Subset sum: pick digits from a list that add up to a target. Checking an answer is easier than finding one.

Prompt: `size` digits 1..9 separated by spaces, ">", the target, "=":

    "3 8 1 6 4>12="   ->  "8+4"      (also right: "3+8+1", "8+3+1", ...)

An answer is right iff it is digits joined by "+", each used no more often than the list holds it, that
add up to the target. The reference answer is the shortest such subset, in list order. Targets lie in
`min_target`..(sum of the list), so no single digit is an answer; a prompt is well-formed only if some
subset reaches its target. With 5 digits there are 9^5 lists × ~30 targets (~1.5M prompts), sampled.

The task exists for self-rewarding (Yuan et al. 2024), which needs a model that judges better than it
answers: here the judge only subtracts and looks up, while the policy must search. `judge_trace` writes
a check that covers every condition of correctness, as a judge model is trained to write it: the target,
then for each term what is left of it and the list position the term uses (each position once), or "x"
when the digit is not left in the list; then the verdict, 1 iff every term was listed and nothing is left:

    "3 8 1 6 4>12=" "8+4"   ->  "12 04@2 00@5 1"
    "3 8 1 6 4>12=" "8+5"   ->  "12 04@2 -01x 0"   (5 is not in the list: a sum check alone would miss
                                                     "3+9" for target 12, the blind spot measured in #21)

A count-down, not running sums: a judge that wrote the sum and then compared it with the target copied the
target instead (on the tiny model's own samples, 100 of 115 wrong answers were called right, most of them
"...14 =15 1"); here the verdict only needs the last remainder to be 00 and no step marked "x".
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

from rlcore.data.tasks import Task

_PROMPT = re.compile(r"([1-9](?: [1-9])*)>([1-9][0-9]*)=")
_ANSWER = re.compile(r"[1-9](?:\+[1-9])*")


class SubsetSumTask(Task):
    """Lists of `size` digits 1..9 and targets from `min_target` up that some sub-list adds up to."""

    name = "subset_sum"

    def __init__(self, size: int = 5, min_target: int = 10, seed: int = 0) -> None:
        if not 2 <= size <= 9:
            raise ValueError(f"size={size} must be in 2..9")
        if not 10 <= min_target <= 9 * size:
            raise ValueError(f"min_target={min_target} must be in 10..{9 * size} (no single digit reaches it)")
        self.size = size
        self.min_target = min_target
        self.seed = seed

    def parse(self, prompt: str) -> tuple[list[int], int] | None:
        """(digits, target) of a well-formed prompt's text, else None (no solvability check)."""
        match = _PROMPT.fullmatch(prompt)
        if not match:
            return None
        digits, target = [int(d) for d in match.group(1).split()], int(match.group(2))
        if len(digits) != self.size or not self.min_target <= target <= sum(digits):
            return None
        return digits, target

    def answer(self, prompt: str) -> str | None:
        """The shortest sub-list that adds up to the target, in list order; None if none does."""
        parsed = self.parse(prompt)
        if parsed is None:
            return None
        digits, target = parsed
        for count in range(2, len(digits) + 1):
            for combination in itertools.combinations(digits, count):
                if sum(combination) == target:
                    return "+".join(map(str, combination))
        return None

    def verify(self, prompt: str, response: str) -> float:
        """1.0 iff the response uses only digits left in the list and adds up to the target (any order). Such a
        response is itself a solution of 2+ digits (min_target > 9), so the prompt needs no solvability search."""
        parsed = self.parse(prompt)
        text = response.strip()
        if parsed is None or not _ANSWER.fullmatch(text):
            return 0.0
        digits, target = parsed
        terms = [int(t) for t in text.split("+")]
        return 1.0 if sum(terms) == target and not Counter(terms) - Counter(digits) else 0.0

    def judge_trace(self, prompt: str, response: str) -> str:
        """The step-by-step check of `response` (module docstring), ending in the verdict "1" or "0"."""
        digits, target = self.parse(prompt) or ([], 0)
        text = response.strip()
        if not digits or not _ANSWER.fullmatch(text):
            return f"{target:02d} ? 0"
        left = dict(enumerate(digits, start=1))  # position -> digit, each position used once
        steps, remainder, available = [f"{target:02d}"], target, True
        for term in map(int, text.split("+")):
            remainder -= term
            position = next((p for p, d in left.items() if d == term), None)
            value = f"{remainder:02d}" if remainder >= 0 else f"-{-remainder:02d}"
            if position is None:
                available = False
                steps.append(f"{value}x")
            else:
                del left[position]
                steps.append(f"{value}@{position}")
        return " ".join(steps) + f" {int(available and remainder == 0)}"

    def alphabet(self) -> str:
        """Digits, space, ">", "=", "+" (the prompts and answers); judge traces add "@", "x", "-", "?"."""
        return " +0123456789=>"

    def _random_prompt(self, rng: random.Random) -> str:
        """A random list and the sum of a random proper sub-list (2..size-1 digits) that reaches min_target."""
        while True:
            digits = [rng.randint(1, 9) for _ in range(self.size)]
            chosen = rng.sample(digits, rng.randint(2, max(2, self.size - 1)))
            if sum(chosen) >= self.min_target:
                return " ".join(map(str, digits)) + f">{sum(chosen)}="

    def _wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """One of three plausible mistakes: a sub-list with the wrong sum; the right sum with a digit that is
        not in the list (first digit + the rest of the target); a right answer with one term off by one."""
        digits, target = self.parse(prompt)
        reference = [int(t) for t in self._answer_of(prompt).split("+")]
        candidates = []
        for count in range(2, len(digits) + 1):
            candidates += ["+".join(map(str, c)) for c in itertools.combinations(digits, count) if sum(c) != target]
        wrong_sum = rng.choice(candidates) if candidates else None
        rest = target - digits[0]
        unavailable = f"{digits[0]}+{rest}" if 1 <= rest <= 9 else None  # right ones are dropped below
        index = rng.randrange(len(reference))
        off = [t + (1 if t < 9 else -1) if i == index else t for i, t in enumerate(reference)]
        options = [o for o in (wrong_sum, unavailable, "+".join(map(str, off))) if o and not self.verify(prompt, o)]
        return rng.choice(options)
