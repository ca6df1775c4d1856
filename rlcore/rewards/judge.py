"""LLM-as-a-Judge: prompt templates, score parsing and judge-quality metrics.

From "Self-Rewarding Language Models" (Yuan et al. 2024): the model judges
its own candidates with an additive 5-point rubric (their Figure 2),
several sampled judgements are averaged, and the judge is evaluated
against human rankings by pairwise accuracy, exact match, Spearman and
Kendall correlation (their Table 3).

Everything here is pure Python (no torch): strings in, numbers out.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

# Figure 2 of Yuan et al. 2024, with {prompt} and {response} as the slots.
JUDGE_RUBRIC = """Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.

User: {prompt}
<response>{response}</response>

After examining the user's instruction and the response:

- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria."""

# For tiny models (about 1M parameters) that cannot follow the rubric: the
# prompt and response glued together, then " score:". The model is trained
# to complete it with ``compact_judge_completion(score)`` (" 4"): a space and
# one digit.
COMPACT_JUDGE_TEMPLATE = "{prompt}{response} score:"


def judge_prompt(prompt: str, response: str, template: str = JUDGE_RUBRIC) -> str:
    """Fill ``template``'s ``{prompt}`` and ``{response}`` slots.

    Uses str.format, so braces inside ``prompt`` or ``response`` are kept
    as they are; a custom template must double any literal braces ({{ }}).
    """
    return template.format(prompt=prompt, response=response)


def compact_judge_completion(score: int) -> str:
    """The completion a tiny judge is trained to write after
    COMPACT_JUDGE_TEMPLATE: a space and the score, e.g. " 4"."""
    return f" {score}"


# A number: optional sign, digits, optional decimal part. The sign is
# matched so that "Score: -1" reads as −1 (out of range) and not as 1.
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
# "Score:" as a word, any case, optionally markdown-bolded ("**Score:** 4"),
# directly followed by something that starts like a number.
_SCORE_LABEL = re.compile(r"\bscore\s*:\s*\**\s*(?=[-+]?\d)", re.IGNORECASE)
_ANY_SCORE_LABEL = re.compile(r"\bscore\s*:", re.IGNORECASE)
# What must follow the label: the number, not glued to more digits or dots
# ("4.5.6"), not a range ("3-4"), optionally "/ max_score".
_LABELLED_VALUE = re.compile(
    rf"(?P<value>{_NUMBER})(?![\d.]*\d)(?!\s*[-–]\s*\d)(?:\s*/\s*(?P<out_of>{_NUMBER}))?"
)
# Compact form: the first line of the completion is a lone number.
_COMPACT_VALUE = re.compile(rf"\s*(?P<value>{_NUMBER})[ \t]*(?:\r?\n|$)")


def parse_score(text: str, max_score: int = 5) -> float | None:
    """The judge's score in ``text``, or None when it gives none we trust.

    Rules, in order:
      1. If ``text`` contains ``Score: N`` (any case, "**Score:** N" too),
         the *last* such label decides. N is an integer or decimal,
         optionally written "N/max_score". If that last N is malformed
         ("4.5.6", "3-4", "4/10" when max_score is 5) the answer is None —
         earlier labels are not a fallback.
      2. If "Score:" appears but never with a number after it, None.
      3. Otherwise (the compact template's completion, e.g. " 4"), the first
         line must be a lone number.
    The value must lie in [0, max_score]; anything else is None. Pass the
    judge's completion; for the compact template, prompt + completion also
    works, since the prompt ends in "score:".
    """
    labels = list(_SCORE_LABEL.finditer(text))
    if labels:
        match = _LABELLED_VALUE.match(text, labels[-1].end())
        if match is None:
            return None
        out_of = match.group("out_of")
        if out_of is not None and float(out_of) != max_score:
            return None
    elif _ANY_SCORE_LABEL.search(text):
        return None  # "Score:" with no number after it: a failed rubric answer
    else:
        match = _COMPACT_VALUE.match(text)
        if match is None:
            return None
    value = float(match.group("value"))
    return value if 0.0 <= value <= max_score else None


def reference_score(judgement: str, response: str, max_score: int = 5) -> float | None:
    """Reference-guided grading (Zheng et al. 2023, "Judging LLM-as-a-Judge"): the judge first writes its own
    answer to the prompt (first line of the judgement); the response scores max_score if it equals that
    answer, else 0. None (malformed) when the judgement's first line is empty.

    This is the tiny models' judge format: they learn to solve the task again from the judge prompt, not to
    compare two numbers digit by digit and write a verdict (see algorithms/self_rewarding.py).
    """
    answer = judgement.strip().split("\n", 1)[0].strip()
    if not answer:
        return None
    return float(max_score) if answer == response.strip() else 0.0


def trace_score(judgement: str, max_score: int = 5) -> float | None:
    """A checked judgement (a task's `judge_trace`, e.g. "12 04@2 00@5 1"): the judge writes each step of its
    check and ends its first line with the verdict, 1 (right: max_score) or 0. None when that line has no step
    before a verdict, or ends in anything else."""
    words = judgement.strip().split("\n", 1)[0].split()
    if len(words) < 2 or words[-1] not in ("0", "1"):
        return None
    return float(max_score) if words[-1] == "1" else 0.0


def average_scores(samples: Sequence[float | None]) -> float | None:
    """Mean of the parsed samples (None entries dropped); None if none parsed.

    The paper samples the judge several times per response and averages.
    """
    parsed = [float(sample) for sample in samples if sample is not None]
    return sum(parsed) / len(parsed) if parsed else None


# ---------------------------------------------------------------------------
# Judge quality against ground truth (Yuan et al. 2024, Table 3)
# ---------------------------------------------------------------------------


def _check_lengths(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y):
        raise ValueError(f"length mismatch: {len(x)} predictions vs {len(y)} ground truths")


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def pairwise_accuracy(pred_scores: Sequence[float], true_scores: Sequence[float]) -> float:
    """Fraction of pairs whose order the judge gets right.

    Over all pairs i < j with true_i != true_j (pairs tied in the ground
    truth have no right order and are skipped). A pair scores 1 if the
    predicted order agrees, 0 if it is reversed, and ½ if the predictions
    are tied — a tie is a coin flip between the two, so a judge that gives
    every response the same score gets 0.5, not 0. NaN if no pair counts.
    """
    _check_lengths(pred_scores, true_scores)
    credit, pairs = 0.0, 0
    for i in range(len(true_scores)):
        for j in range(i + 1, len(true_scores)):
            true_order = _sign(true_scores[i] - true_scores[j])
            if true_order == 0:
                continue
            pred_order = _sign(pred_scores[i] - pred_scores[j])
            pairs += 1
            credit += 0.5 if pred_order == 0 else float(pred_order == true_order)
    return credit / pairs if pairs else math.nan


def exact_match(pred_scores: Sequence[float], true_scores: Sequence[float]) -> float:
    """Fraction of items whose predicted score equals the true one exactly
    (an averaged 3.5 never matches 3 or 4). NaN for empty input."""
    _check_lengths(pred_scores, true_scores)
    if not true_scores:
        return math.nan
    hits = sum(float(pred) == float(true) for pred, true in zip(pred_scores, true_scores))
    return hits / len(true_scores)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda index: values[index])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    spread_x = sum((a - mean_x) ** 2 for a in x)
    spread_y = sum((b - mean_y) ** 2 for b in y)
    if spread_x == 0 or spread_y == 0:
        return math.nan
    return covariance / math.sqrt(spread_x * spread_y)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks (ties get the
    mean of their ranks). NaN when either side is constant or n < 2."""
    _check_lengths(x, y)
    if len(x) < 2:
        return math.nan
    return _pearson(_average_ranks(x), _average_ranks(y))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b:

        τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2))

    C, D: concordant and discordant pairs; n0 = n(n−1)/2; n1, n2: pairs
    tied in x, in y. (n0 − n1 counts the pairs not tied in x.)
    NaN when either side is constant or n < 2.
    """
    _check_lengths(x, y)
    concordant = discordant = untied_x = untied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sign_x, sign_y = _sign(x[i] - x[j]), _sign(y[i] - y[j])
            untied_x += sign_x != 0
            untied_y += sign_y != 0
            concordant += sign_x * sign_y > 0
            discordant += sign_x * sign_y < 0
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return (concordant - discordant) / math.sqrt(untied_x * untied_y)
