"""Verifiable tasks: short prompts with exact reference answers and exact verifiers.

A task is a space of plain-text prompts ("12+7=") that a tiny model completes
with just the answer ("19"). Each task computes the reference answer of any
well-formed prompt, including prompts the model writes itself; everything else
(splits, verification, training corpora, preference pairs, judge data) is
derived here from four task-specific methods, so every task shares it. A task
whose prompts have several right answers (subset sum) overrides `verify` too.

Splits: a prompt is held out iff its SHA-256 is 0 modulo `HELDOUT_EVERY`, so
the split is a property of the prompt alone, the same for every seed and every
task instance, and no prompt is in both splits. Seeds only choose which prompts
are drawn and in what order.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

SPLITS = ("train", "heldout")
HELDOUT_EVERY = 20
"""One prompt in this many is held out: ~1,000 of the 20,000 default arithmetic prompts."""
MAX_LISTED = 200_000
"""Prompt spaces up to this size are listed in full; larger ones are sampled, at most this many at a time."""
DRAWS_PER_PROMPT = 100
"""Draw budget per requested prompt when sampling a split of a large space."""


@dataclass(frozen=True)
class Example:
    """A prompt and its exact reference answer."""

    prompt: str
    answer: str


def split_of(prompt: str) -> str:
    """The split, "train" or "heldout", that `prompt` belongs to (a stable hash, no seed)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0 else "train"


def near_miss(value: int, rng: random.Random, signed: bool = True) -> int:
    """A plausible wrong integer: off by one or ten, the sign flipped, or one digit changed.

    With signed=False, `value` must be >= 0 and so is the result.
    """
    digits = list(str(abs(value)))
    position = rng.randrange(len(digits))
    digits[position] = rng.choice([d for d in "0123456789" if d != digits[position]])
    digit_changed = int("".join(digits)) * (-1 if value < 0 else 1)
    candidates = {value - 1, value + 1, value - 10, value + 10, -value, digit_changed} - {value}
    return rng.choice(sorted(c for c in candidates if signed or c >= 0))


class Task(ABC):
    """A verifiable task. Subclasses set `name` and `seed` and implement the abstract methods."""

    name: str
    seed: int

    @abstractmethod
    def answer(self, prompt: str) -> str | None:
        """The exact reference answer of `prompt`, or None if it is not well-formed for this task."""

    @abstractmethod
    def alphabet(self) -> str:
        """Every character that prompts and answers of this task can contain (a superset is fine)."""

    @abstractmethod
    def _random_prompt(self, rng: random.Random) -> str:
        """A random well-formed prompt, from either split."""

    @abstractmethod
    def _wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """A plausible answer to the well-formed `prompt` that differs from the reference answer."""

    def _all_prompts(self) -> list[str] | None:
        """Every well-formed prompt, or None when there are more than `MAX_LISTED`."""
        return None

    def is_well_formed(self, prompt: str) -> bool:
        """Whether `prompt` belongs to this task."""
        return self.answer(prompt) is not None

    def verify(self, prompt: str, response: str) -> float:
        """1.0 iff the stripped response is exactly the reference answer; 0.0 otherwise or if malformed."""
        reference = self.answer(prompt)
        return 1.0 if reference is not None and response.strip() == reference else 0.0

    def examples(self, split: str, n: int) -> list[Example]:
        """`n` distinct prompts of `split` with their answers, fixed by the task's seed.

        A shorter list is a prefix of a longer one. Raises ValueError if the split has fewer than n.
        """
        return [Example(prompt, self._answer_of(prompt)) for prompt in self._prompts(split, n, self.seed)]

    def corpus(self, n: int) -> list[str]:
        """`n` train prompts joined to their answers ("12+7=19"), for training a tokenizer.

        Prompts may repeat, so n may exceed the size of the train split. A few hundred
        texts contain every character of `alphabet()`.
        """
        rng = random.Random(f"corpus:{self.seed}")
        prompts = [self._draw("train", rng) for _ in range(n)]
        return [prompt + self._answer_of(prompt) for prompt in prompts]

    def preference_pairs(self, split: str, n: int, seed: int) -> list[dict]:
        """`n` dicts {"prompt", "chosen", "rejected"}: the right answer and a plausible wrong one."""
        rng = random.Random(f"pairs:{seed}")
        return [
            {"prompt": prompt, "chosen": self._answer_of(prompt), "rejected": self._wrong_answer(prompt, rng)}
            for prompt in self._prompts(split, n, seed)
        ]

    def rankings(self, split: str, n: int, seed: int, wrong: int = 2) -> list[dict]:
        """`n` rows {"query", "responses", "scores"} in the RRHF repository's format: the right answer (score 1)
        and up to `wrong` distinct plausible wrong ones (score 0), in a seeded random order."""
        rng = random.Random(f"rankings:{seed}")
        rows = []
        for prompt in self._prompts(split, n, seed):
            answer = self._answer_of(prompt)
            wrongs = list(dict.fromkeys(w for w in (self._wrong_answer(prompt, rng) for _ in range(4 * wrong))
                                        if w != answer))[:wrong]
            scored = [(answer, 1), *((w, 0) for w in wrongs)]
            rng.shuffle(scored)
            rows.append({"query": prompt, "responses": [r for r, _ in scored], "scores": [s for _, s in scored]})
        return rows

    def judge_examples(self, split: str, n: int, seed: int) -> list[dict]:
        """`n` dicts {"prompt", "response", "correct"}: about half right answers, half plausible wrong ones."""
        rng = random.Random(f"judge:{seed}")
        rows = []
        for prompt in self._prompts(split, n, seed):
            correct = rng.random() < 0.5
            response = self._answer_of(prompt) if correct else self._wrong_answer(prompt, rng)
            rows.append({"prompt": prompt, "response": response, "correct": correct})
        return rows

    def few_shot_prompts(self, k: int, seed: int) -> list[str]:
        """`k` distinct train prompts, e.g. as examples for self-instruction."""
        return self._prompts("train", k, seed)

    def _answer_of(self, prompt: str) -> str:
        """The answer of a prompt known to be well-formed."""
        answer = self.answer(prompt)
        assert answer is not None, f"generated a malformed prompt {prompt!r}"
        return answer

    @cached_property
    def _listed_splits(self) -> dict[str, list[str]] | None:
        """Each split's prompts in a fixed order, when the prompt space is small enough to list."""
        prompts = self._all_prompts()
        if prompts is None:
            return None
        return {split: [p for p in prompts if split_of(p) == split] for split in SPLITS}

    def _draw(self, split: str, rng: random.Random) -> str:
        """One random prompt of `split` (draws may repeat)."""
        if self._listed_splits is not None:
            return rng.choice(self._listed_splits[split])
        prompt = self._random_prompt(rng)
        while split_of(prompt) != split:
            prompt = self._random_prompt(rng)
        return prompt

    def _prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` distinct prompts of `split`, fixed by `seed`; ValueError if the split cannot supply n."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        if n < 0:
            raise ValueError(f"n={n} must be >= 0")
        rng = random.Random(f"{split}:{seed}")
        if self._listed_splits is not None:
            pool = list(self._listed_splits[split])
            if n > len(pool):
                raise ValueError(f"n={n} exceeds the {len(pool)} {split} prompts of task {self.name!r}")
            rng.shuffle(pool)
            return pool[:n]
        if n > MAX_LISTED:
            raise ValueError(f"n={n} exceeds the {MAX_LISTED} prompts a split of a large space can supply")
        found: dict[str, None] = {}  # insertion-ordered set
        for _ in range(DRAWS_PER_PROMPT * n + 1000):
            if len(found) == n:
                break
            prompt = self._random_prompt(rng)
            if split_of(prompt) == split:
                found[prompt] = None
        if len(found) < n:
            raise ValueError(f"could not draw n={n} distinct {split} prompts of task {self.name!r}")
        return list(found)


# The tasks import Task from this module, so they are imported after it is defined.
from rlcore.data.tasks.arithmetic import ArithmeticTask  # noqa: E402
from rlcore.data.tasks.calendar import CalendarTask  # noqa: E402
from rlcore.data.tasks.subset_sum import SubsetSumTask  # noqa: E402

TASKS: dict[str, type[Task]] = {task.name: task for task in (ArithmeticTask, CalendarTask, SubsetSumTask)}


def get_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with `kwargs`; ValueError listing the allowed names if unknown."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {sorted(TASKS)}")
    return TASKS[name](**kwargs)
