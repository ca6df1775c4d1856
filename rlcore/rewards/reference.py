"""Reference-answer rewards: does the response give the row's answer? (RL from verifiable rewards, GSM8K-style.)

    extract      what of a text is compared
        none         all of it, stripped
        last_number  its last number ("so 3,000.50 left" -> "3000.50")
        boxed        the content of its last \\boxed{...} (nested braces kept)
        hash         what follows its last "####" (GSM8K's answer format), up to the end of that line
    match
        exact        equal strings
        numeric      equal numbers ("72", "72.0", "$72" and "72 dollars" match; falls back to exact)

A text the rule finds nothing in (no number, no \\boxed{}) never matches.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, rule: str) -> str | None:
    """The part of `text` that `rule` compares, or None when there is none."""
    if rule == "none":
        return text.strip()
    if rule == "last_number":
        numbers = NUMBER.findall(text)
        return numbers[-1].replace(",", "").replace("$", "") if numbers else None
    if rule == "hash":
        if "####" not in text:
            return None
        lines = text.rsplit("####", 1)[1].strip().splitlines()
        return lines[0].strip() if lines else None
    if rule == "boxed":
        start = text.rfind("\\boxed{")
        if start < 0:
            return None
        depth, begin = 0, start + len("\\boxed{")
        for i in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth < 0:
                return text[begin:i].strip()
        return None
    raise ValueError(f"unknown extraction rule {rule!r}; allowed: none, last_number, boxed, hash")


def _number(text: str) -> float | None:
    found = NUMBER.search(text)
    if found is None:
        return None
    try:
        return float(found.group().replace(",", "").replace("$", ""))
    except ValueError:
        return None


def reference_match(response: str, answer: str, extract: str = "none", answer_extract: str = "none",
                    match: str = "exact") -> bool:
    """Whether `response` gives `answer` under the extraction rules and the match kind."""
    got, want = extract_answer(response, extract), extract_answer(str(answer), answer_extract)
    if got is None or want is None or not want:
        return False
    if match == "numeric":
        a, b = _number(got), _number(want)
        if a is not None and b is not None:
            return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    elif match != "exact":
        raise ValueError(f"unknown match {match!r}; allowed: exact, numeric")
    return got == want
