"""Tests of the verifiable tasks: answers, verifiers, splits and derived training data."""

from __future__ import annotations

import json
import random
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from rlcore.data.tasks import TASKS, ArithmeticTask, CalendarTask, Example, Task, get_task, near_miss, split_of

TARA_CALENDAR = Path(__file__).resolve().parents[1] / "data" / "tara" / "calendar_train.jsonl"


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request) -> Task:
    """Each task with its default arguments, shared by the tests (tasks hold no state but caches)."""
    return get_task(request.param)


# --- arithmetic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [("12+7=", "19"), ("3-9=", "-6"), ("0-0=", "0"), ("99+99=", "198"), ("0-99=", "-99")],
)
def test_arithmetic_answers(prompt: str, answer: str) -> None:
    assert ArithmeticTask().answer(prompt) == answer


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [("2+3*4=", "14"), ("2*3+4=", "10"), ("10-2*3-1=", "3"), ("7*8=", "56"), ("2*3*4-30=", "-6"), ("9-4+2=", "7")],
)
def test_arithmetic_precedence_and_several_operands(prompt: str, answer: str) -> None:
    """'*' binds tighter; '+' and '-' go left to right: 9-4+2 = (9-4)+2 = 7, not 9-(4+2) = 3."""
    assert ArithmeticTask(max_operands=4, ops="+-*").answer(prompt) == answer


@pytest.mark.parametrize(
    "prompt",
    ["1++2=", "12+", "abc=", "=", "+1=", "1+2", "1 + 2=", "1+2==", "100+1=", "07+1=", "1*2=", "1+2+3=", "5=",
     "1+2=3", "１+2=", "1" * 5000 + "+1=", ""],
)
def test_arithmetic_rejects_malformed_prompts(prompt: str) -> None:
    """Default task: two operands in 0..99, '+' and '-', no spaces or leading zeros, trailing '='."""
    task = ArithmeticTask()
    assert not task.is_well_formed(prompt)
    assert task.answer(prompt) is None
    assert task.verify(prompt, "3") == 0.0


def test_arithmetic_verify() -> None:
    task = ArithmeticTask()
    for right in ["19", "19 ", "  19\n"]:
        assert task.verify("12+7=", right) == 1.0, right
    for wrong in ["20", "18", "", " ", "19.0", "019", "+19", "1 9", "19<eos>", "19 is the answer", "=19"]:
        assert task.verify("12+7=", wrong) == 0.0, wrong
    assert task.verify("3-9=", "-6") == 1.0
    for wrong in ["6", "- 6", "-7", "--6"]:
        assert task.verify("3-9=", wrong) == 0.0, wrong


@pytest.mark.parametrize(
    ("kwargs", "bad_name"),
    [({"ops": ""}, "ops"), ({"ops": "+/"}, "ops"), ({"ops": "++"}, "ops"), ({"min_operands": 0}, "min_operands"),
     ({"min_operands": 3, "max_operands": 2}, "max_operands"), ({"max_value": 0}, "max_value")],
)
def test_arithmetic_rejects_bad_arguments(kwargs: dict, bad_name: str) -> None:
    with pytest.raises(ValueError, match=bad_name):
        ArithmeticTask(**kwargs)


def test_arithmetic_default_split_sizes() -> None:
    """100 * 100 operand pairs * 2 operators = 20,000 prompts; about one in 20 held out."""
    task = ArithmeticTask()
    train, heldout = task._listed_splits["train"], task._listed_splits["heldout"]
    assert len(train) + len(heldout) == 20_000
    assert 900 <= len(heldout) <= 1100
    assert len(task.examples("heldout", len(heldout))) == len(heldout)
    with pytest.raises(ValueError, match=f"n={len(heldout) + 1}"):
        task.examples("heldout", len(heldout) + 1)


def test_arithmetic_large_space_is_sampled() -> None:
    task = ArithmeticTask(min_operands=2, max_operands=4, max_value=999, ops="+-*")
    assert task._all_prompts() is None
    examples = task.examples("heldout", 50)
    assert len({e.prompt for e in examples}) == 50
    assert all(split_of(e.prompt) == "heldout" for e in examples)
    assert {len(re.split(r"[-+*]", e.prompt)) for e in examples} == {2, 3, 4}


def test_wrong_answers_stay_in_the_alphabet_without_minus() -> None:
    task = ArithmeticTask(max_operands=3, ops="+*")
    rejected = [pair["rejected"] for pair in task.preference_pairs("train", 300, seed=0)]
    assert all(int(answer) >= 0 for answer in rejected)


@pytest.mark.parametrize("value", [0, 1, 9, 10, -6, 198, 4000])
def test_near_miss_is_never_the_value(value: int) -> None:
    rng = random.Random(value)
    misses = {near_miss(value, rng) for _ in range(200)}
    assert value not in misses and {value - 1, value + 1, value + 10} <= misses
    if value >= 0:
        assert all(near_miss(value, rng, signed=False) >= 0 for _ in range(200))


# --- calendar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("weekday 2023-05-14=", "Sunday"),
        ("weekday 2000-01-01=", "Saturday"),
        ("weekday 2024-02-29=", "Thursday"),
        ("days 2023-05-14 2023-06-01=", "18"),
        ("days 2023-06-01 2023-05-14=", "-18"),
        ("days 2023-05-14 2023-05-14=", "0"),
        ("days 2023-12-31 2024-12-31=", "366"),
        ("after 2023-05-14 +30=", "2023-06-13"),
        ("after 2023-05-14 -30=", "2023-04-14"),
        ("after 2024-02-28 +1=", "2024-02-29"),
        ("after 2023-05-14 +0=", "2023-05-14"),
        ("after 2030-12-31 +400=", "2032-02-04"),
    ],
)
def test_calendar_answers(prompt: str, answer: str) -> None:
    assert CalendarTask().answer(prompt) == answer


@pytest.mark.parametrize(
    "prompt",
    ["weekday 2023-02-30=", "weekday 2023-13-01=", "weekday 2023-5-14=", "weekday 1999-12-31=", "weekday 2031-01-01=",
     "weekday 2023-05-14", "Weekday 2023-05-14=", "weekday  2023-05-14=", "weekday 20230514=", "weekday 2023-05-14 =",
     "days 2023-05-14=", "days 2023-05-14 2023-02-29=", "after 2023-05-14 30=", "after 2023-05-14 +401=",
     "after 2023-05-14 -0=", "after 2023-05-14 +030=", "after 2023-05-14 +99999999999=", "after 2023-05-14=",
     "1+2=", ""],
)
def test_calendar_rejects_malformed_prompts(prompt: str) -> None:
    task = CalendarTask()
    assert not task.is_well_formed(prompt)
    assert task.verify(prompt, "Sunday") == 0.0


def test_calendar_verify() -> None:
    task = CalendarTask()
    assert task.verify("weekday 2023-05-14=", " Sunday\n") == 1.0
    assert task.verify("days 2023-06-01 2023-05-14=", "-18") == 1.0
    assert task.verify("after 2023-05-14 -30=", "2023-04-14") == 1.0
    for wrong in ["sunday", "Sun", "Sunday.", "Sunday Monday", "Monday", ""]:
        assert task.verify("weekday 2023-05-14=", wrong) == 0.0, wrong
    for wrong in ["18", "-17", "- 18", "-18 days"]:
        assert task.verify("days 2023-06-01 2023-05-14=", wrong) == 0.0, wrong
    for wrong in ["2023-04-15", "2023-4-14", "14/04/2023", "2023-06-13"]:
        assert task.verify("after 2023-05-14 -30=", wrong) == 0.0, wrong


@pytest.mark.parametrize(
    ("kwargs", "bad_name"),
    [({"start_year": 999}, "start_year"), ({"start_year": 2010, "end_year": 2000}, "end_year"),
     ({"max_offset": -1}, "max_offset")],
)
def test_calendar_rejects_bad_arguments(kwargs: dict, bad_name: str) -> None:
    with pytest.raises(ValueError, match=bad_name):
        CalendarTask(**kwargs)


def test_calendar_answers_match_datetime() -> None:
    """Random in-range dates and offsets, answered independently with datetime."""
    task, rng = CalendarTask(), random.Random(0)
    for _ in range(300):
        first = date(2000, 1, 1) + timedelta(days=rng.randrange(11_323))
        second = date(2000, 1, 1) + timedelta(days=rng.randrange(11_323))
        offset = rng.randint(-400, 400)
        assert task.answer(f"weekday {first.isoformat()}=") == first.strftime("%A")
        assert task.answer(f"days {first.isoformat()} {second.isoformat()}=") == str((second - first).days)
        assert task.answer(f"after {first.isoformat()} {offset:+d}=") == (first + timedelta(days=offset)).isoformat()


def test_calendar_agrees_with_tara_tool_observations() -> None:
    """The recorded Calendar.* observations of TARA's calendar rows verify as right answers.

    TARA's day_difference is the absolute difference, so its two dates go earlier first.
    """
    if not TARA_CALENDAR.exists():
        pytest.skip(f"{TARA_CALENDAR} not present")
    task, checked = CalendarTask(), 0
    for line in TARA_CALENDAR.read_text().splitlines():
        row = json.loads(line)
        for side in ("pos_answer", "neg_answer"):
            action = row[side]["actions"]
            if not isinstance(action, dict):
                continue
            arguments = [argument.strip() for argument in action["Action Input"].split(",")]
            if action["Action"] == "Calendar.week_day" and len(arguments) == 1:
                prompt = f"weekday {arguments[0]}="
            elif action["Action"] == "Calendar.day_difference" and len(arguments) == 2:
                prompt = "days {} {}=".format(*sorted(arguments))
            elif action["Action"] == "Calendar.target_day" and len(arguments) == 2:
                prompt = f"after {arguments[0]} {int(arguments[1]):+d}="
            else:
                continue
            if task.is_well_formed(prompt):
                assert task.verify(prompt, action["Observation"]) == 1.0, (prompt, action["Observation"])
                checked += 1
    assert checked >= 300


# --- subset sum ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "response", "right"),
    [("3 8 1 6 4>12=", "8+4", 1.0), ("3 8 1 6 4>12=", "3+8+1", 1.0), ("3 8 1 6 4>12=", "4+8", 1.0),
     ("3 8 1 6 4>12=", " 8+4 ", 1.0), ("3 8 1 6 4>12=", "8+5", 0.0), ("3 8 1 6 4>12=", "3+9", 0.0),
     ("3 8 1 6 4>12=", "6+6", 0.0), ("6 6 1 2 3>12=", "6+6", 1.0), ("3 8 1 6 4>12=", "8+4+", 0.0),
     ("3 8 1 6 4>12=", "12", 0.0), ("3 8 1 6 4>12=", "", 0.0), ("1 1 1 1 1>10=", "1+1", 0.0)],
)
def test_subset_sum_accepts_every_right_subset(prompt: str, response: str, right: float) -> None:
    assert get_task("subset_sum").verify(prompt, response) == right


def test_subset_sum_answers_and_malformed_prompts() -> None:
    task = get_task("subset_sum")
    assert task.answer("3 8 1 6 4>12=") == "8+4"  # shortest, in list order
    assert task.answer("7 1 5 6 4>17=") == "7+6+4"
    assert task.answer("9 9 9 9 1>11=") is None  # no sub-list reaches 11
    for prompt in ["3 8 1 6 4>9=", "3 8 1 6 4>23=", "3 8 1 6>12=", "3 8 0 6 4>12=", "3 8 1 6 4>012=", "38164>12="]:
        assert task.answer(prompt) is None, prompt
    with pytest.raises(ValueError, match="size=1"):
        get_task("subset_sum", size=1)
    with pytest.raises(ValueError, match="min_target=5"):
        get_task("subset_sum", min_target=5)


def test_subset_sum_judge_trace_checks_sums_and_availability() -> None:
    task = get_task("subset_sum")
    assert task.judge_trace("3 8 1 6 4>12=", "8+4") == "12 04@2 00@5 1"
    assert task.judge_trace("3 8 1 6 4>12=", "8+5") == "12 04@2 -01x 0"
    assert task.judge_trace("3 8 1 6 4>12=", "3+9") == "12 09@1 00x 0"  # the right sum, a digit not listed
    assert task.judge_trace("3 8 1 6 4>12=", "6+6") == "12 06@4 00x 0"  # 6 listed once, used twice
    assert task.judge_trace("3 8 1 6 4>12=", "8+1") == "12 04@2 03@3 0"  # not enough
    assert task.judge_trace("3 8 1 6 4>12=", "twelve") == "12 ? 0"
    rng = random.Random(0)
    for example in task.examples("train", 300):  # the verdict is the verifier, right and wrong answers alike
        wrong = task._wrong_answer(example.prompt, rng)
        for response in (example.answer, wrong):
            assert task.judge_trace(example.prompt, response)[-1] == str(int(task.verify(example.prompt, response)))


def test_subset_sum_wrong_answers_include_the_unlisted_digit_kind() -> None:
    task = get_task("subset_sum")
    rng = random.Random(1)
    wrong = [(e.prompt, task._wrong_answer(e.prompt, rng)) for e in task.examples("train", 400)]
    unlisted = [1 for prompt, answer in wrong if "x" in task.judge_trace(prompt, answer)]
    assert 0.1 < len(unlisted) / len(wrong) < 0.6


# --- every task ---------------------------------------------------------------------------------


def test_examples_are_deterministic_distinct_and_right(task: Task) -> None:
    examples = task.examples("train", 200)
    assert examples == get_task(task.name).examples("train", 200)
    assert examples[:50] == task.examples("train", 50)
    assert len({e.prompt for e in examples}) == 200
    assert all(isinstance(e, Example) and task.verify(e.prompt, e.answer) == 1.0 for e in examples)
    assert get_task(task.name, seed=1).examples("train", 200) != examples


def test_splits_are_disjoint(task: Task) -> None:
    train = {e.prompt for e in task.examples("train", 2000)}
    heldout = {e.prompt for e in task.examples("heldout", 500)}
    assert not train & heldout
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "heldout" for p in heldout)
    other_seed_heldout = {e.prompt for e in get_task(task.name, seed=5).examples("heldout", 500)}
    assert not train & other_seed_heldout, "the split must not depend on the seed"


def test_bad_split_and_n(task: Task) -> None:
    with pytest.raises(ValueError, match="split"):
        task.examples("test", 1)
    with pytest.raises(ValueError, match="n=10000000"):
        task.examples("heldout", 10_000_000)
    assert task.examples("heldout", 0) == []


def test_corpus_covers_the_alphabet(task: Task) -> None:
    corpus = task.corpus(300)
    assert len(corpus) == 300
    assert set("".join(corpus)) == set(task.alphabet())
    assert all(split_of(text[: text.index("=") + 1]) == "train" for text in corpus)
    assert all(task.verify(text[: text.index("=") + 1], text[text.index("=") + 1 :]) for text in corpus)
    assert len(task.corpus(20_000)) == 20_000, "more than the train split holds: texts repeat"


def test_preference_pairs(task: Task) -> None:
    pairs = task.preference_pairs("train", 300, seed=3)
    assert pairs == task.preference_pairs("train", 300, seed=3)
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"}
        assert pair["chosen"] != pair["rejected"]
        assert task.verify(pair["prompt"], pair["chosen"]) == 1.0
        assert task.verify(pair["prompt"], pair["rejected"]) == 0.0
        assert set(pair["rejected"]) <= set(task.alphabet())


def test_rankings(task: Task) -> None:
    """RRHF-format rows: the answer scored 1 and two distinct wrong answers scored 0, in varying order."""
    rows = task.rankings("train", 200, seed=5)
    assert rows == task.rankings("train", 200, seed=5)
    assert [row["query"] for row in rows] == [pair["prompt"] for pair in task.preference_pairs("train", 200, 5)]
    for row in rows:
        assert sorted(row["scores"]) == [0, 0, 1] and len(set(row["responses"])) == 3
        for response, score in zip(row["responses"], row["scores"]):
            assert task.verify(row["query"], response) == score
    assert len({row["scores"].index(1) for row in rows}) == 3  # the answer is not always in one place


def test_judge_examples(task: Task) -> None:
    rows = task.judge_examples("heldout", 400, seed=4)
    assert all(split_of(row["prompt"]) == "heldout" for row in rows)
    assert 0.4 <= sum(row["correct"] for row in rows) / len(rows) <= 0.6
    for row in rows:
        assert task.verify(row["prompt"], row["response"]) == (1.0 if row["correct"] else 0.0)


def test_few_shot_prompts(task: Task) -> None:
    prompts = task.few_shot_prompts(5, seed=7)
    assert prompts == task.few_shot_prompts(5, seed=7)
    assert len(set(prompts)) == 5
    assert all(task.is_well_formed(p) and split_of(p) == "train" for p in prompts)


def test_get_task() -> None:
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    assert isinstance(get_task("calendar", max_offset=30), CalendarTask)
    assert get_task("arithmetic", ops="*").ops == "*"
    assert get_task("subset_sum", size=4).size == 4
    with pytest.raises(ValueError, match="arithmetic.*calendar.*subset_sum"):
        get_task("sudoku")
