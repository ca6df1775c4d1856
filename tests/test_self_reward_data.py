"""Seed data of self-rewarding training (IFT, EFT compact and rubric, prompt writing), best-vs-worst pairs
and judge quality.

No model: formats, scores that follow the verifier, what the judge's trained
completions parse to, and the pair and metric arithmetic worked by hand.
"""

import math

import pytest
import torch

from algorithms.self_rewarding_seed import (
    MAX_SCORE,
    SeedConfig,
    best_vs_worst,
    eft_examples,
    ift_examples,
    judge_completion,
    judge_quality,
    judge_score,
    pair_minibatches,
    seed_examples,
    self_instruct_examples,
    self_instruct_prompt,
    verifier_score,
)
from rlcore.core.batch import make_batch
from rlcore.core.config import ConfigError
from rlcore.data.tasks import get_task, split_of
from rlcore.rewards.judge import COMPACT_JUDGE_TEMPLATE, JUDGE_RUBRIC, judge_prompt, kendall_tau, parse_score, spearman


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


def test_verifier_score_is_top_score_iff_right(task):
    assert verifier_score(task, "12+7=", "19") == MAX_SCORE
    assert verifier_score(task, "12+7=", " 19 ") == MAX_SCORE  # the verifier strips
    assert verifier_score(task, "12+7=", "18") == 0
    assert verifier_score(task, "12+7=", "") == 0


@pytest.mark.parametrize("template", ["compact", "rubric"])
@pytest.mark.parametrize("score", [0, MAX_SCORE])
def test_judge_completions_parse_back_to_their_score(score, template):
    assert parse_score(judge_completion(score, template)) == score


@pytest.mark.parametrize("correct", [True, False])
def test_reference_eft_completion_is_the_answer_and_scores_by_the_verifier(task, correct):
    """The reference judge writes the right answer whatever the response; judge_score then gives the
    verifier's score: 5 for the right response, 0 for a near miss."""
    pairs = zip(eft_examples(task, 50, seed=1, template="reference"), task.judge_examples("train", 50, 1))
    for example, row in [(e, r) for e, r in pairs if r["correct"] == correct][:10]:
        assert example.answer == " " + task.answer(row["prompt"])
        assert judge_score("reference", example.answer, row["response"]) == (MAX_SCORE if correct else 0)


def test_trace_eft_completion_is_the_tasks_check_and_scores_by_the_verifier():
    """The trace judge writes subset_sum's step-by-step check; its verdict is the verifier's, for right answers,
    wrong sums and the right sum reached with a digit that is not in the list alike."""
    subset_sum = get_task("subset_sum")
    rows = subset_sum.judge_examples("train", 200, 1)
    examples = eft_examples(subset_sum, 200, seed=1, template="trace")
    for example, row in zip(examples, rows):
        assert example.prompt == row["prompt"] + row["response"] + " score:"
        assert example.answer == " " + subset_sum.judge_trace(row["prompt"], row["response"])
        assert judge_score("trace", example.answer, row["response"]) == (MAX_SCORE if row["correct"] else 0)
    assert judge_score("trace", " 12 09@1 00x 0", "3+9") == 0
    for malformed in ["", " 1", " 12 04@2 00@5", " 12 04@2 00@5 2", " 12 04@2 00@5 1x"]:
        assert judge_score("trace", malformed, "8+4") is None, malformed
    with pytest.raises(ValueError, match="template=trace needs a task that writes judge traces"):
        eft_examples(get_task("arithmetic"), 4, seed=1, template="trace")


def test_compact_completion_is_a_space_and_a_digit():
    assert judge_completion(5, "compact") == " 5"
    assert judge_completion(0, "compact") == " 0"


def test_eft_compact_examples_follow_the_verifier(task):
    rows = eft_examples(task, 200, seed=1, template="compact")
    assert len(rows) == 200
    for row in rows:
        assert row.prompt.endswith(" score:")
        prompt_and_response = row.prompt[: -len(" score:")]
        prompt, response = prompt_and_response.split("=", 1)
        expected = verifier_score(task, prompt + "=", response)
        assert parse_score(row.answer) == expected
    scores = [parse_score(row.answer) for row in rows]
    assert 0.3 < scores.count(MAX_SCORE) / len(scores) < 0.7  # about half right


def test_eft_rubric_examples_use_the_papers_prompt(task):
    rows = eft_examples(task, 20, seed=1, template="rubric")
    judged = task.judge_examples("train", 20, 1)
    for row, source in zip(rows, judged):
        assert row.prompt == judge_prompt(source["prompt"], source["response"], JUDGE_RUBRIC)
        assert row.answer.splitlines()[-1] == f"Score: {MAX_SCORE if source['correct'] else 0}"


def test_compact_eft_prompt_is_the_shared_template(task):
    source = task.judge_examples("train", 1, 1)[0]
    row = eft_examples(task, 1, seed=1)[0]
    assert row.prompt == COMPACT_JUDGE_TEMPLATE.format(prompt=source["prompt"], response=source["response"])


def test_self_instruct_examples_write_a_new_train_prompt(task):
    rows = self_instruct_examples(task, 100, shots=3, seed=2)
    for row in rows:
        shots = row.prompt.split("\n")
        assert shots[-1] == "" and len(shots) == 4  # three prompts, each closed by a newline
        assert row.prompt == self_instruct_prompt(shots[:3])
        assert all(task.is_well_formed(p) and split_of(p) == "train" for p in shots[:3] + [row.answer])
        assert row.answer not in shots[:3]


def test_seed_mix_holds_every_kind_and_no_heldout_prompt(task):
    config = SeedConfig(ift_size=300, eft_size=200, self_instruct_size=100)
    kinds = seed_examples(task, config)
    assert {kind: len(rows) for kind, rows in kinds.items()} == {"ift": 300, "eft": 200, "self_instruct": 100}
    assert all(task.is_well_formed(r.prompt) and split_of(r.prompt) == "train" for r in kinds["ift"])
    assert all(r.prompt.endswith(" score:") for r in kinds["eft"])
    assert all(r.prompt.endswith("\n") for r in kinds["self_instruct"])
    assert kinds["ift"] == ift_examples(task, 300)


def test_seed_config_names_the_bad_key():
    with pytest.raises(ConfigError, match="template"):
        SeedConfig(template="verbose")


# ---------------------------------------------------------------------------- pairs and judge quality


def candidates(responses: list[str], per_prompt: int = 4):
    """A batch of len(responses) one-token-per-character candidates, `per_prompt` to a prompt."""
    return make_batch(
        prompt_ids=[[1, 2]] * len(responses),
        response_ids=[[3 + int(c) for c in text] or [0] for text in responses],
        pad_token_id=0,
        group=[i // per_prompt for i in range(len(responses))],
        info={"prompt": ["p"] * len(responses), "response": responses},
    )


def test_best_vs_worst_drops_ties_and_unjudged_prompts():
    """Prompt 0: scores 5, 0, 2.5, None -> chosen row 0, rejected row 1. Prompt 1: all 5 -> a tie.
    Prompt 2: never parsed -> unjudged. Prompt 3: best and worst are the same text -> a tie."""
    batch = candidates(["1", "2", "3", "4", "5", "6", "7", "8", "1", "2", "3", "4", "7", "7", "7", "7"])
    scores = [5, 0, 2.5, None, 5, 5, 5, 5, None, None, None, None, 5, 0, None, None]
    rows, counts = best_vs_worst(batch, scores)
    assert rows == [0, 1]
    assert counts == {"pairs": 1, "ties": 2, "unjudged_prompts": 1}


def test_best_vs_worst_min_margin_drops_close_calls():
    """Prompt 0: 5 vs 0 (margin 5) stays; prompt 1: 4 vs 2 (margin 2) is a tie under min_margin 3."""
    batch = candidates(["1", "2", "3", "4", "5", "6", "7", "8"])
    scores = [5, 0, 5, 5, 4, 2, 3, 3]
    assert best_vs_worst(batch, scores, min_margin=3) == ([0, 1], {"pairs": 1, "ties": 1, "unjudged_prompts": 0})
    assert best_vs_worst(batch, scores)[0] == [0, 1, 4, 5]


def test_pair_minibatches_keep_pairs_whole():
    """10 pairs, 4 a step, ranks x accumulation = 2: two steps of 4 pairs (the last 2 pairs wait);
    with multiple 3: three steps of 3. Rows 2i and 2i+1 always come from the same pair."""
    pairs = make_batch([[1]] * 20, [[2]] * 20, 0, group=[i // 2 for i in range(20)])
    generator = torch.Generator().manual_seed(0)
    for multiple, expected in [(2, [8, 8]), (3, [6, 6, 6]), (1, [8, 8])]:
        steps = pair_minibatches(pairs, 4, multiple, generator)
        assert [len(b) for b in steps] == expected
        for step in steps:
            groups = step.group.tolist()
            assert groups[0::2] == groups[1::2] and len(set(groups)) == len(groups) // 2
    assert pair_minibatches(pairs.select(range(4)), 64, 4, generator) == []
    assert [len(b) for b in pair_minibatches(pairs.select(range(4)), 64, 1, generator)] == [4]


def test_judge_quality_by_hand():
    """Prompt 0: truth 5,0,0,5, judged 5,0,5,10/3. Right-wrong pairs (0,1) ok, (0,2) tie = 1/2,
    (3,1) ok, (3,2) reversed: pairwise 2.5/4. The judge's favourites are rows 0 and 2 (score 5),
    one right: top pick 1/2. Prompt 1 (all wrong) has no right-wrong pair.
    Pooled over the 7 judged rows: exact 4/7 (rows 0, 1, 4, 7)."""
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    truth = [5, 0, 0, 5, 0, 0, 0, 0]
    scores = [5, 0, 5, 10 / 3, 0, 5, None, 0]
    quality = judge_quality(groups, scores, truth)
    pred, true = [5, 0, 5, 10 / 3, 0, 5, 0], [5, 0, 0, 5, 0, 0, 0]
    assert quality["pairwise_accuracy"] == pytest.approx(0.625)
    assert quality["top_pick"] == pytest.approx(0.5)
    assert quality["exact_match"] == pytest.approx(4 / 7)
    assert quality["judged"] == pytest.approx(7 / 8)
    assert quality["spearman"] == pytest.approx(spearman(pred, true))
    assert quality["kendall_tau"] == pytest.approx(kendall_tau(pred, true))
    assert math.isnan(judge_quality([0, 0], [5, 5], [5, 5])["pairwise_accuracy"])
