"""Tests for rlcore.rewards.judge: templates, score parsing, judge-quality metrics.

Every metric is checked against values worked by hand in the docstring.
"""

import math

import pytest

from rlcore.rewards.judge import (
    COMPACT_JUDGE_TEMPLATE,
    JUDGE_RUBRIC,
    average_scores,
    compact_judge_completion,
    exact_match,
    judge_prompt,
    kendall_tau,
    pairwise_accuracy,
    parse_score,
    reference_score,
    spearman,
)

# --------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------


def test_rubric_has_the_five_additive_criteria_and_the_score_format():
    """Figure 2 of the paper: five one-point criteria, then "Score: <total points>"."""
    for phrase in [
        "additive 5-point",
        "relevant and provides some information",
        "addresses a substantial portion",
        "answers the basic elements",
        "clearly written from an AI Assistant's perspective",
        "impeccably tailored",
        "without extraneous information",
        'Conclude with the score using the format: "Score: <total points>"',
    ]:
        assert phrase in JUDGE_RUBRIC
    assert JUDGE_RUBRIC.count("point") >= 5


def test_judge_prompt_fills_slots_and_keeps_braces():
    """The prompt and response land in their slots; braces inside them are
    kept verbatim (format only parses the template)."""
    text = judge_prompt("What is {x}?", "x is {1}.")
    assert "User: What is {x}?\n<response>x is {1}.</response>" in text
    assert "{prompt}" not in text and "{response}" not in text
    assert judge_prompt("12+3=", "15", COMPACT_JUDGE_TEMPLATE) == "12+3=15 score:"


def test_compact_completion_round_trips():
    """" 4" parses to 4 alone and after the compact prompt ("… score: 4")."""
    for score in range(6):
        completion = compact_judge_completion(score)
        assert completion == f" {score}"
        assert parse_score(completion) == score
        assert parse_score(judge_prompt("2+2=", "4", COMPACT_JUDGE_TEMPLATE) + completion) == score


# --------------------------------------------------------------------------
# parse_score
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The response is relevant and clear.\nScore: 4", 4.0),
        ("Score: 0", 0.0),
        ("Score: 5", 5.0),
        ("score:3", 3.0),
        ("SCORE : 2", 2.0),
        ("Score: 3.5", 3.5),
        ("Score: 4.", 4.0),  # sentence full stop, not a decimal
        ("**Score:** 4", 4.0),
        ("**Score: 4**", 4.0),
        ("Score: 4/5", 4.0),
        ("Score: 2 points", 2.0),
        ("Score: 1\n...on reflection...\nScore: 3", 3.0),  # the last one decides
        ('Conclude with "Score: <total points>"\nI award 2 points. Score: 2', 2.0),
        ("4", 4.0),  # compact form
        (" 4", 4.0),
        ("  3\nand then the tiny model babbles 9", 3.0),
        ("2.5", 2.5),
    ],
)
def test_parse_score_accepts(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "The response is great.",
        "Score:",
        "Score: <total points>",
        "3\nScore: unknown",  # a rubric answer that failed: no compact fallback
        "Score: four",
        "Score: 6",  # above max_score
        "Score: 5.5",
        "Score: -1",  # out of range, not read as 1
        "Score: 10",
        "Score: 45",
        "Score: 4.5.6",  # malformed number
        "Score: 3-4",  # a range is not a score
        "Score: 4/10",  # on another scale
        "Score: 3\nScore: 7",  # the last label decides, and it is out of range
        "Subscore: 3",  # not the word "score"
        "1 point is awarded for relevance",  # not a lone number
        "4 5",
        "7",  # compact form out of range
        "-2",
        "4/5",  # compact form must be a lone number
    ],
)
def test_parse_score_rejects(text):
    assert parse_score(text) is None


def test_parse_score_max_score():
    """max_score widens or narrows the range and the accepted "/N"."""
    assert parse_score("Score: 7", max_score=10) == 7.0
    assert parse_score("Score: 7/10", max_score=10) == 7.0
    assert parse_score("Score: 4/5", max_score=10) is None
    assert parse_score("Score: 2", max_score=1) is None
    assert parse_score("1", max_score=1) == 1.0


def test_average_scores():
    """[4, None, 3, 5] -> (4 + 3 + 5)/3 = 4; [2.5, 3] -> 2.75; all None or empty -> None."""
    assert average_scores([4.0, None, 3.0, 5.0]) == 4.0
    assert average_scores([2.5, 3.0]) == 2.75
    assert average_scores([None, None]) is None
    assert average_scores([]) is None
    assert average_scores([0.0]) == 0.0  # zero is a score, not a failure


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


def test_pairwise_accuracy():
    """true = [1, 2, 3], pred = [1, 3, 3]: pairs (0,1) right, (0,2) right,
    (1,2) predicted tie -> ½: (1 + 1 + 0.5)/3 = 5/6.
    true = [1, 1, 2] skips the tied pair (0,1); pred [2, 1, 3] gets (0,2) and
    (1,2) right -> 1; pred reversed [3, 2, 1] -> 0.
    Constant pred: every counted pair is a tie -> 0.5.
    All true tied -> no pair counts -> NaN."""
    assert pairwise_accuracy([1, 3, 3], [1, 2, 3]) == pytest.approx(5 / 6)
    assert pairwise_accuracy([2, 1, 3], [1, 1, 2]) == 1.0
    assert pairwise_accuracy([3, 2, 1], [1, 1, 2]) == 0.0
    assert pairwise_accuracy([4, 4, 4, 4], [1, 2, 3, 4]) == 0.5
    assert math.isnan(pairwise_accuracy([1, 2], [3, 3]))
    with pytest.raises(ValueError):
        pairwise_accuracy([1, 2], [1, 2, 3])


def test_exact_match():
    """pred [4, 3.5, 2, 5] vs true [4, 4, 2, 1]: matches at 0 and 2 -> 2/4.
    (3.5 never equals 4.) Empty -> NaN."""
    assert exact_match([4, 3.5, 2, 5], [4, 4, 2, 1]) == 0.5
    assert math.isnan(exact_match([], []))


def test_spearman():
    """x = [1, 2, 3, 4], y = [1, 3, 2, 4]: no ties, d = [0, −1, 1, 0],
    Σd² = 2 -> ρ = 1 − 6·2/(4·15) = 0.8.
    With ties, x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4]:
      deviations from 2.5: x [−1.5, 0, 0, 1.5], y [−1.5, −0.5, 0.5, 1.5]
      Σxy = 4.5, Σx² = 4.5, Σy² = 5 -> ρ = 4.5/√22.5 = √0.9 = 0.9486833.
    Reversed order -> −1; a constant side -> NaN."""
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert spearman([10, 20, 30], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))
    assert math.isnan(spearman([1], [1]))


def test_spearman_is_invariant_to_monotone_maps():
    """Ranks only: squaring positive x or shifting y changes nothing."""
    x, y = [0.5, 3.0, 1.0, 2.0, 2.0], [1, 5, 2, 3, 4]
    assert spearman(x, y) == pytest.approx(spearman([v * v for v in x], [v + 7 for v in y]))


def test_kendall_tau_b():
    """x = [1, 2, 3, 4], y = [1, 3, 2, 4]: of 6 pairs only (1,2) is
    discordant -> (5 − 1)/6 = 2/3.
    Ties, x = [1, 2, 2, 3], y = [1, 2, 3, 4]: pair (1,2) tied in x;
    the other 5 concordant. n0 = 6, n1 = 1, n2 = 0 ->
      τ_b = 5/√((6 − 1)(6 − 0)) = 5/√30 = 0.9128709.
    Ties on both sides, x = [1, 1, 2, 2], y = [1, 2, 1, 2]:
      pairs (0,1) tied x, (2,3) tied x, (0,2) tied y, (1,3) tied y,
      (0,3) concordant, (1,2) discordant -> (1 − 1)/√(4·4) = 0.
    Reversed -> −1; constant side -> NaN."""
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0.0)
    assert kendall_tau([1, 2, 3], [9, 5, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 2, 3], [4, 4, 4]))
    with pytest.raises(ValueError):
        kendall_tau([1], [1, 2])


def test_kendall_tau_b_with_ties_against_count_formula():
    """Cross-check the pair loop against the tie-group formula on
    x = [1, 2, 2, 3, 3, 3], y = [2, 1, 3, 3, 4, 4]:
      n0 = 15; x tie groups {2,2}, {3,3,3} -> n1 = 1 + 3 = 4;
      y tie groups {3,3}, {4,4} -> n2 = 1 + 1 = 2.
      Pairs (i<j): (0,1) D; (0,2) (0,3) (0,4) (0,5) C; (1,2) tied x;
      (1,3) (1,4) (1,5) C; (2,3) tied y; (2,4) (2,5) C; (3,4) (3,5) tied x;
      (4,5) tied both.  C = 4 + 3 + 2 = 9, D = 1.
      τ_b = (9 − 1)/√((15 − 4)(15 − 2)) = 8/√143 = 0.6689936."""
    x, y = [1, 2, 2, 3, 3, 3], [2, 1, 3, 3, 4, 4]
    assert kendall_tau(x, y) == pytest.approx(8 / math.sqrt(143))


@pytest.mark.parametrize("judgement, response, expected", [
    (" 19", "19", 5.0), (" 19\n", " 19 ", 5.0), (" 18", "19", 0.0), (" -19", "19", 0.0),
    (" 19\nmore text", "19", 5.0), ("", "19", None), (" \n \n", "19", None)])
def test_reference_score(judgement, response, expected):
    """The first line of the judgement is the judge's own answer: equal -> max score, else 0, empty -> None."""
    assert reference_score(judgement, response) == expected
