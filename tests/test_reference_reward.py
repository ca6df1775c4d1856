"""Reference-answer matching (rlcore.rewards.reference): each extraction rule and match kind on the texts
RL-from-verifiable-rewards datasets hold."""

from __future__ import annotations

import pytest

from rlcore.rewards.reference import extract_answer, reference_match


@pytest.mark.parametrize("text, rule, expected", [
    ("  19 \n", "none", "19"),
    ("3 apples and 4 pears make 7", "last_number", "7"),
    ("she has $1,234.50 left", "last_number", "1234.50"),
    ("the debt is -12", "last_number", "-12"),
    ("no digits here", "last_number", None),
    ("so \\boxed{\\frac{1}{2}} and \\boxed{42}", "boxed", "42"),
    ("nested \\boxed{x^{2}+1} done", "boxed", "x^{2}+1"),
    ("unclosed \\boxed{12", "boxed", None),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "hash", "72"),
    ("#### 5\nmore text", "hash", "5"),
    ("no marker 5", "hash", None),
])
def test_extraction_rules(text, rule, expected):
    assert extract_answer(text, rule) == expected


def test_matching():
    assert reference_match("19", "19") and not reference_match("190", "19")
    assert not reference_match("72.0", "72")  # exact compares strings
    assert reference_match("72.0", "72", match="numeric")
    assert reference_match("The answer is 72 dollars.", "... #### 72", "last_number", "hash", "numeric")
    assert not reference_match("The answer is 71.", "#### 72", "last_number", "hash", "numeric")
    assert not reference_match("anything", "no hash marker", "none", "hash")  # an answer without its marker
    assert reference_match("\\boxed{x+1}", "x+1", "boxed", "none", "numeric")  # not numbers: exact fallback
    with pytest.raises(ValueError, match="extraction rule"):
        extract_answer("1", "first_number")
