"""Themis (rlcore.rewards.themis): trace formatting, token kinds, the model wrapper, the tool loop and training.

The tool loop is driven here by a scripted generator (what a model would write) so
every branch is exercised exactly: a real call, a malformed action, an unknown tool,
a hanging tool, the call limit. tests/test_reward_workers.py runs it with a real model.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from launch.themis_eval import compare
from rlcore.models.loading import load_tokenizer
from rlcore.models.tiny import build_tiny_lm
from rlcore.rewards.tara import load_tara, render_trace
from rlcore.rewards.themis.generated import (
    CALENDAR_TOOLS,
    calendar_templates,
    generated_calculator_rows,
    generated_calendar_rows,
    generated_rows,
    restate,
    stated_value,
)
from rlcore.rewards.themis.model import ThemisModel, TinyLMSpec, score_segments
from rlcore.rewards.themis.tool_loop import ToolTrace, run_tool_traces
from rlcore.rewards.themis.trace import (
    OBSERVATION,
    Segment,
    encode_segments,
    example_segments,
    render_segments,
    split_generated,
)
from rlcore.rewards.themis.training import (
    ThemisConfig,
    accuracy_by_type,
    check_calls,
    make_pair_batch,
    question_type,
    themis_loss,
    train_themis,
)
from rlcore.rewards.tools import TOOLS, ToolContext

TARA = Path(__file__).resolve().parents[1] / "data" / "tara"
SMALL = TinyLMSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400, max_positions=512)


@pytest.fixture(scope="module")
def calendar_rows():
    return load_tara(TARA / "calendar_train.jsonl", limit=24)


@pytest.fixture(scope="module")
def tiny_lm(calendar_rows, tmp_path_factory):
    texts = [render_segments(example_segments(r.question, a, True)) for r in calendar_rows for a in (r.pos, r.neg)]
    return build_tiny_lm(texts, SMALL, tmp_path_factory.mktemp("themis-lm"))


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return load_tokenizer(str(tiny_lm))


def fresh_model(path, seed: int = 0) -> ThemisModel:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return ThemisModel(AutoModelForCausalLM.from_pretrained(path))


# ---------------------------------------------------------------------- formatting


@pytest.mark.parametrize("file_name", ["calendar_train.jsonl", "multi_tools_train.jsonl", "hh_rlhf_train.jsonl"])
def test_trace_segments_render_like_tara(file_name):
    """One call, several calls and no call: the segments after the context join to render_trace."""
    for row in load_tara(TARA / file_name, limit=5):
        for answer in (row.pos, row.neg):
            segments = example_segments(row.question, answer, use_tools=True)
            assert segments[0] == Segment("context", f"Question: {row.question}\nAnswer: {answer.answer}\n")
            assert render_segments(segments[1:]) == render_trace(answer)
            assert segments[-1].kind == "rationale"
            assert [s.kind for s in segments[1:-1]] == (["tool", "observation"] * len(answer.tool_calls) or ["tool"])
            assert example_segments(row.question, answer, use_tools=False) == segments[:1]
            assert example_segments(row.question, answer, use_tools=True, rationale=False) == segments[:-1]


def test_encode_segments_marks_what_the_model_writes(calendar_rows, tokenizer):
    row = calendar_rows[0]
    segments = example_segments(row.question, row.neg, use_tools=True)
    ids, kinds = encode_segments(tokenizer, segments, add_eos=True)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == len(kinds)
    assert kinds[-1] == "rationale"  # the eos is learnt: the model learns to stop
    text_of = lambda kind: tokenizer.decode([i for i, k in zip(ids, kinds) if k == kind])  # noqa: E731
    assert text_of("observation") == f" {row.neg.tool_calls[0].observation}\n"
    assert text_of("tool").endswith(f"Action Input: {row.neg.tool_calls[0].action_input}\n{OBSERVATION}")
    assert text_of("rationale").startswith("Rationale: ") and row.neg.answer in text_of("context")
    # without a rationale the model still learns to stop: the eos after the observation is its own
    ids, kinds = encode_segments(tokenizer, example_segments(row.question, row.neg, True, rationale=False), True)
    assert kinds[-2:] == ["observation", "tool"] and ids[-1] == tokenizer.eos_token_id
    ids, kinds = encode_segments(tokenizer, example_segments(row.question, row.neg, False), True)
    assert set(kinds) == {"context"}  # a plain RM writes nothing


def test_split_generated():
    assert split_generated("Thought: done\nRationale: ok") == [Segment("tool", "Thought: done\n"),
                                                                Segment("rationale", "Rationale: ok")]
    assert split_generated("Rationale: ok") == [Segment("rationale", "Rationale: ok")]
    assert split_generated("no rationale") == [Segment("tool", "no rationale")]
    assert split_generated("") == []


# ---------------------------------------------------------------------- model


def test_save_load_round_trip_and_padding_invariance(tiny_lm, tokenizer, calendar_rows, tmp_path):
    model = fresh_model(tiny_lm).eval()
    examples = [example_segments(r.question, r.pos, True) for r in calendar_rows[:5]]
    examples.append(example_segments(calendar_rows[0].question, calendar_rows[0].pos, False))  # a short one
    batched = score_segments(model, tokenizer, examples)
    one_by_one = torch.cat([score_segments(model, tokenizer, [e]) for e in examples])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "rm", tokenizer)
    reloaded = ThemisModel.load(tmp_path / "rm")
    torch.testing.assert_close(score_segments(reloaded, load_tokenizer(str(tmp_path / "rm")), examples), batched)
    with pytest.raises(FileNotFoundError, match="not a Themis reward model"):
        ThemisModel.load(tiny_lm)


@pytest.mark.parametrize("use_tools", [True, False])
def test_training_steps_lower_the_loss(tiny_lm, tokenizer, calendar_rows, use_tools):
    """Ten AdamW steps on one batch lower the total loss (LM + ranking with tools, ranking alone without)."""
    model = fresh_model(tiny_lm)
    batch = make_pair_batch(tokenizer, calendar_rows[:8], use_tools, max_length=512)
    assert batch.input_ids.shape[0] == 16
    assert bool(batch.tool_mask.any()) == use_tools and bool(batch.rationale_mask.any()) == use_tools
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss, stats = themis_loss(model, batch, rank_weight=1.0, tool_weight=1.0, rationale_weight=1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(stats["loss"])
    assert losses[-1] < 0.8 * losses[0], losses
    if use_tools:
        assert stats["tool_loss"] > 0 and stats["rationale_loss"] > 0
    else:
        assert stats["tool_loss"] == 0 and stats["rationale_loss"] == 0


def test_loss_weights_combine_the_terms(tiny_lm, tokenizer, calendar_rows):
    model = fresh_model(tiny_lm).eval()
    batch = make_pair_batch(tokenizer, calendar_rows[:4], True, max_length=512)
    with torch.no_grad():
        _, parts = themis_loss(model, batch, 1.0, 1.0, 1.0)
        total, _ = themis_loss(model, batch, 2.0, 0.5, 0.0)
    assert total.item() == pytest.approx(2.0 * parts["rank_loss"] + 0.5 * parts["tool_loss"], rel=1e-5)


# ---------------------------------------------------------------------- the tool loop (scripted model)


class Script:
    """A stand-in generator: each row's outputs in order, one per round; records the stop strings."""

    def __init__(self, tokenizer, outputs: dict[str, list[str]]):
        self.tokenizer, self.outputs, self.stops = tokenizer, outputs, []

    def __call__(self, prefixes, stop):
        self.stops.append(stop)
        results = []
        for ids in prefixes:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            key = next(k for k in self.outputs if k in text)
            output = self.outputs[key].pop(0)
            results.append((output, "Rationale:" in output))
        return results


class HangingTool:
    name = "Hang"

    def run(self, action_input, context=None):
        time.sleep(5)
        return "never"


def test_tool_loop_runs_tools_and_turns_failures_into_observations(tokenizer):
    call = "Thought: check\nAction: {tool}\nAction Input: {arg}\nObservation: (the model makes this up)"
    outputs = {
        "Q-real": [call.format(tool="Calendar.week_day", arg="2008-06-16"), "Rationale: it is Monday"],
        "Q-malformed": ["Thought: hmm\nAction Input: 2008-06-16\nObservation:", "Rationale: no tool"],
        "Q-unknown": [call.format(tool="Calendar.moon_phase", arg="2008-06-16"), "Rationale: unknown"],
        "Q-hang": [call.format(tool="Hang", arg="x"), "Rationale: slow"],
        "Q-none": ["Thought: Do I need to use a tool? No\nRationale: fine"],
    }
    script = Script(tokenizer, outputs)
    contexts = [f"Question: {key}\nAnswer: a\n" for key in outputs]
    start = time.time()
    traces = run_tool_traces(contexts, script, tokenizer, [ToolContext()] * len(contexts),
                             {**TOOLS, "Hang": HangingTool()}, max_calls=2, timeout_s=0.5)
    assert time.time() - start < 4
    observations = [[s.text for s in t.segments if s.kind == "observation"] for t in traces]
    assert observations[0] == [" Monday\n"]  # the real tool's answer replaced what the model made up
    assert traces[0].text.endswith("Action Input: 2008-06-16\nObservation: Monday\nRationale: it is Monday")
    assert observations[1][0].startswith(" Error: no 'Action:' line")
    assert observations[2][0].startswith(" Error: unknown tool 'Calendar.moon_phase'")
    assert observations[3] == [" Error: Hang did not answer within 0.5 s\n"]
    assert observations[4] == [] and traces[4].calls == 0
    assert all(t.finished for t in traces) and [t.calls for t in traces] == [1, 1, 1, 1, 0]
    assert script.stops[0] == [OBSERVATION]


def test_tool_loop_bounds_the_number_of_calls(tokenizer):
    call = "Thought: again\nAction: Calendar.week_day\nAction Input: 2008-06-16\nObservation:"
    script = Script(tokenizer, {"Q-loop": [call] * 4 + ["Rationale: gave up"]})
    [trace] = run_tool_traces(["Question: Q-loop\nAnswer: a\n"], script, tokenizer, [ToolContext()], max_calls=2)
    observations = [s.text for s in trace.segments if s.kind == "observation"]
    assert observations[:2] == [" Monday\n", " Monday\n"] and trace.calls == 2
    assert observations[2] == " Error: no more tool calls allowed (the limit is 2)\n"
    # max_calls + 2 rounds at most; the last one without the stop string, so the model must finish
    assert script.stops == [[OBSERVATION]] * 3 + [[]]
    assert len(observations) == 3


# ---------------------------------------------------------------------- generated pairs and call checks


def test_generated_calendar_rows_state_the_real_tools_result():
    rows = load_tara(TARA / "calendar_train.jsonl")
    templates = calendar_templates(rows)
    assert {t.tool for t in templates} == set(CALENDAR_TOOLS) and len(templates) >= 300
    generated = generated_calendar_rows(templates, 200, seed=3)
    assert generated == generated_calendar_rows(templates, 200, seed=3)
    for row in generated:
        call = row.pos.tool_calls[0]
        assert row.neg.tool_calls[0] == call
        assert call.observation == TOOLS[call.action].run(call.action_input)
        assert all(arg.strip().lstrip("-") in row.question for arg in call.action_input.split(","))
        assert stated_value(row.pos.answer) == call.observation != stated_value(row.neg.answer)
        assert row.pos.rationale.endswith("so the answer is right.") and row.neg.rationale.endswith("wrong.")
        assert f"says {stated_value(row.neg.answer)} and the tool says {call.observation}" in row.neg.rationale
        if call.action == "Calendar.target_day":  # the tool compares the dates: 0 days apart or not
            pos_check, neg_check = row.pos.tool_calls[1], row.neg.tool_calls[1]
            assert pos_check.observation == "0" != neg_check.observation
            assert neg_check.action_input == f"{stated_value(row.neg.answer)}, {call.observation}"
            assert f"{neg_check.observation} days apart, so the answer is wrong." in row.neg.rationale
        else:
            assert len(row.pos.tool_calls) == len(row.neg.tool_calls) == 1
    offsets = [int(r.pos.tool_calls[0].action_input.split(",")[1]) for r in generated
               if r.pos.tool_calls[0].action == "Calendar.target_day"]
    assert min(offsets) < 0 < max(offsets)  # "before" questions get negative offsets
    with pytest.raises(ValueError, match="no Calendar row"):
        generated_calendar_rows([], 1, seed=0)
    # train_themis generates from the rows as recorded: restated ones lose the target-date templates
    assert "Calendar.target_day" not in {t.tool for t in calendar_templates([restate(r) for r in rows])}


def test_generated_calculator_rows_are_judged_by_the_real_tool():
    rows = load_tara(TARA / "calculator_train.jsonl", limit=60)
    generated = generated_calculator_rows(rows, 40, seed=0)
    assert len(generated) == 40
    for row in generated:
        assert row.pos.tool_calls[0].observation == "Both the calculation and the answer are correct."
        assert "does not match the predicted answer" in row.neg.tool_calls[0].observation
        assert stated_value(row.neg.answer) != stated_value(row.pos.answer)
        assert row.pos.tool_calls[0].action_input == row.neg.tool_calls[0].action_input == "Same as the answer"
    assert len(generated_rows(rows, 10, seed=0)) == 10


def test_check_calls_counts_right_inputs_and_observations(calendar_rows):
    """Traces are the pos answers, then the neg answers; an input is right up to spacing, a missing call is not."""
    rows = calendar_rows[:2]

    def trace(call_input: str | None) -> ToolTrace:
        if call_input is None:
            return ToolTrace([Segment("context", "Q"), Segment("rationale", "Rationale: no call")])
        text = f"Thought: t\nAction: {rows[0].pos.tool_calls[0].action}\nAction Input: {call_input}\n{OBSERVATION}"
        observation = TOOLS[rows[0].pos.tool_calls[0].action].run(call_input)
        return ToolTrace([Segment("context", "Q"), Segment("tool", text), Segment("observation", f" {observation}\n")])
    right = rows[0].pos.tool_calls[0].action_input
    spaced = right.replace(",", " ,  ")
    check = check_calls(rows, [trace(right), trace(None), trace(spaced), trace("2001-01-01, 2001-01-02")])
    assert (check.answers, check.inputs_right, check.observations_right) == (4, 2, 2)
    assert question_type(rows[0]) == question_type(rows[1]) == "Calendar.day_difference"
    assert accuracy_by_type(rows, [1.0, 0.0], [0.0, 0.0]) == {"Calendar.day_difference": 0.75}  # a tie counts ½


# ---------------------------------------------------------------------- end to end, shortened


def test_themis_eval_end_to_end_small(tmp_path):
    """The calendar measurement (launch.themis_eval) in miniature: 20 rows and 16 generated pairs, a 2-layer
    model, 2 epochs, the three variants over two seeds, the tool models evaluated with generated traces and
    real tool calls."""
    import json

    with open(TARA / "calendar_train.jsonl") as source:
        (tmp_path / "rows.jsonl").write_text("".join(line for line, _ in zip(source, range(20))))
    config = ThemisConfig(data=str(tmp_path / "rows.jsonl"), tiny=SMALL, epochs=2, batch_size=8, max_new_tokens=24,
                          restated=True, generated_pairs=16, output_dir=str(tmp_path / "eval"))
    result = compare(config, seeds=(0, 1))
    assert (result["train_pairs"], result["heldout_pairs"]) == (16 + 16, 4)
    variants = result["variants"]
    assert set(variants) == {"tools", "no_rationale", "plain"}
    for entry in variants.values():
        assert len(entry["accuracy"]["values"]) == 2
        assert entry["accuracy"]["mean"] == pytest.approx(sum(entry["accuracy"]["values"]) / 2)
        assert set(entry["by_type"]) <= {"Calendar.week_day", "Calendar.day_difference", "Calendar.target_day"}
    assert variants["plain"]["accuracy"] == variants["plain"]["recorded_traces"]
    assert variants["plain"]["call_inputs_right"]["mean"] is None
    assert 0 <= variants["tools"]["call_inputs_right"]["mean"] <= 1
    saved = json.loads((tmp_path / "eval" / "themis_eval.json").read_text())
    assert saved["variants"]["tools"]["accuracy"] == variants["tools"]["accuracy"]
    for name in ("tools-seed0", "no_rationale-seed1"):
        assert (tmp_path / "eval" / name / "value_head.safetensors").exists()
        traces = (tmp_path / "eval" / name / "heldout_traces.jsonl").read_text().splitlines()
        assert len(traces) == 8 and all("Question:" in json.loads(t)["text"] for t in traces)


def test_themis_learns_to_call_the_tool_with_the_questions_arguments(tmp_path):
    """Trained on the TARA weekday rows plus generated pairs, Themis writes, for held-out TARA questions it
    has not seen, the call with the question's date (from no right call at initialisation), and the real tool
    answers it. (That it also learns to judge by the observation takes ~4,000 steps: the README's
    `rlcore themis-eval` table, not a test.)"""
    rows = [r for r in load_tara(TARA / "calendar_train.jsonl") if question_type(r) == "Calendar.week_day"]
    config = ThemisConfig(heldout_fraction=0.25, restated=True, generated_pairs=800, epochs=3, batch_size=8,
                          max_new_tokens=64, output_dir=str(tmp_path / "tools"))
    result = train_themis(config, rows)
    print(f"weekday pairs: call inputs right {result.heldout_call_inputs_right:.1%}, observations right "
          f"{result.heldout_observations_right:.1%}, accuracy {result.heldout_accuracy_generated:.1%}, "
          f"{result.seconds:.0f} s")
    assert result.heldout_pairs == 32 and result.steps == 3 * -(-(98 + 800) // 8)
    assert result.heldout_call_inputs_right >= 0.9 and result.heldout_observations_right >= 0.9
