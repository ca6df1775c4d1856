"""TARA rows: both `actions` forms on real rows, errors that name file and line, traces,
replays, and the agreement of rlcore's tools with the recorded observations."""

import json
from pathlib import Path

import pytest

from rlcore.rewards.tara import (
    ReplayedCall,
    TaraFormatError,
    explain_disagreement,
    load_tara,
    measure_agreement,
    observations_agree,
    parse_actions,
    render_trace,
    replay_tools,
)
from rlcore.rewards.tools import TOOLS, SandboxLimits, run_tool
from rlcore.rewards.tools.code_run import CodeRun

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tara"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"TARA data not found at {DATA_DIR}")


@needs_data
def test_object_form_on_a_real_calculator_row():
    row = load_tara(DATA_DIR / "calculator_train.jsonl", limit=1)[0]
    assert row.id == "calculator_train_0"
    assert row.source.endswith("calculator_train.jsonl:1")
    (call,) = row.pos.tool_calls
    assert call.action == "calculator"
    assert call.action_input == "<<2*62=124>>124, <<70+124=194>>194, <<194-2=192>>192"
    assert call.observation == "Both the calculation and the answer are correct."
    assert row.pos.score == 1.0 and row.neg.score == 0.0
    assert row.neg.rationale.startswith("Based on the execution results from the calculator tool")


@needs_data
def test_string_form_on_a_real_multi_tool_row():
    row = load_tara(DATA_DIR / "multi_tools_train.jsonl", limit=1)[0]
    target_day, weather = row.pos.tool_calls
    assert (target_day.action, target_day.action_input, target_day.observation) == (
        "Calendar.target_day", "2023-03-04, 64", "2023-05-07")
    assert target_day.thought == "I need to search what day is 64 days after 2023-03-04."
    assert (weather.action, weather.action_input) == ("history_weather", "Riyadh, 2023-05-07")
    # the observation runs over two lines; its second line is not mistaken for a field
    assert weather.observation.startswith("The weather for Riyadh on 2023-05-07 is: \noverall weather: Partly")
    assert weather.observation.endswith("UV index: 10.0.")


@needs_data
def test_string_form_without_a_tool_and_code_rows():
    hh = load_tara(DATA_DIR / "hh_rlhf_train.jsonl", limit=3)
    assert all(row.pos.tool_calls == () and row.neg.tool_calls == () for row in hh)
    code = load_tara(DATA_DIR / "code_train.jsonl", limit=1)[0]
    assert code.pos.tool_calls[0].action_input == "Same as the answer"
    assert code.test_list[0] == "assert degree_radian(90)==5156.620156177409"


def test_parse_actions_by_hand():
    text = ("Thought: first\nAction: Calendar.week_day\nAction Input: 2008-06-16\nObservation: Monday\n"
            "Thought: second\nAction: calculator\nAction Input: 1+1\nObservation: 2\nThought: done")
    calls = parse_actions(text)
    assert [(call.thought, call.action, call.action_input, call.observation) for call in calls] == [
        ("first", "Calendar.week_day", "2008-06-16", "Monday"), ("second", "calculator", "1+1", "2")]
    assert parse_actions("Thought: Do I need to use a tool? No\nFinished.") == ()


@pytest.mark.parametrize(
    ("actions", "complaint"),
    [
        ({"Thought": "t", "Action": "calculator", "Action Input": "1"}, "lacks 'Observation'"),
        ("Thought: t\nAction: calculator\nObservation: 2", "lacks 'Action Input'"),
        ("Observation first: no label at the start", "does not start with"),
        (["not", "a", "call"], "must be an object or a string"),
    ],
)
def test_parse_actions_rejects_malformed_actions(actions, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_actions(actions)


def _row(row_id, actions):
    answer = {"answer": "a", "score": 1, "actions": actions, "score_agent": {"explanation": "e", "score": "1"}}
    return json.dumps({"id": row_id, "question": "q", "pos_answer": answer, "neg_answer": answer})


@pytest.mark.parametrize(
    ("bad_line", "complaint"),
    [
        ('{"id": "broken", "question": ', "not valid JSON"),
        ('{"id": "x", "question": "q"}', "missing field 'pos_answer'"),
        (_row("x", "Thought: t\nAction: calculator\nAction Input: 1"), "a tool call lacks 'Observation'"),
    ],
)
def test_malformed_row_error_names_file_and_line(tmp_path, bad_line, complaint):
    path = tmp_path / "rows.jsonl"
    path.write_text(_row("good", "Thought: Do I need to use a tool? No") + "\n\n" + bad_line + "\n")
    with pytest.raises(TaraFormatError, match=f"rows.jsonl:3: {complaint}"):
        load_tara(path)


def test_render_trace(tmp_path):
    path = tmp_path / "row.jsonl"
    path.write_text(_row("x", {"Thought": "check", "Action": "calculator", "Action Input": "<<1+1=2>>2",
                               "Observation": "Both the calculation and the answer are correct."}))
    (row,) = load_tara(path)
    assert render_trace(row.pos) == ("Thought: check\nAction: calculator\nAction Input: <<1+1=2>>2\n"
                                     "Observation: Both the calculation and the answer are correct.\nRationale: e")


@needs_data
def test_render_trace_without_tools_and_with_two():
    (hh,) = load_tara(DATA_DIR / "hh_rlhf_train.jsonl", limit=1)
    assert render_trace(hh.pos) == ("Thought: Do I need to use a tool? No\nRationale: There are no tools involved. "
                                    "I need to evaluate and score the answer based solely on its content.")
    (multi,) = load_tara(DATA_DIR / "multi_tools_train.jsonl", limit=1)
    trace = render_trace(multi.pos)
    assert trace.count("\nAction: ") == 2 and trace.startswith("Thought: I need to search what day")
    assert "\nObservation: 2023-05-07\nThought: I need to search the weather" in trace


@needs_data
def test_replay_tools_from_recorded_rows():
    replays = replay_tools(load_tara(DATA_DIR / "multi_tools_train.jsonl", limit=5))
    assert list(replays) == ["history_weather"]
    weather = replays["history_weather"]
    assert weather.run("Riyadh, 2023-05-07").startswith("The weather for Riyadh on 2023-05-07 is:")
    assert weather.run("Atlantis, 2023-05-07").startswith("Replay: no recorded observation for history_weather")


def test_observations_agree_normalises_whitespace_numbers_and_reasons():
    assert observations_agree("answer 192.0 does not match", "answer  192 does\nnot match ")
    assert not observations_agree("2023-05-07", "2023-5-7")
    assert not observations_agree("answer 130", "answer 131")
    recorded = "The pass rate is 0.0. All test cases failed. Failed reason: invalid syntax (<string>, line 4); x"
    ours = "The pass rate is 0.0. All test cases failed. Failed reason: x; '(' was never closed (<string>, line 2)"
    assert observations_agree(recorded, ours)
    failed = "The pass rate is 0.0. All test cases failed. Failed reason: "
    assert observations_agree(failed + "timed out", failed + "timed out after 3.0 s of CPU time")
    passed = "The pass rate is 1.0. All test cases passed."
    assert observations_agree(passed, passed + " Sandbox: stdout truncated to 10 bytes (of 11).")


@needs_data
def test_agreement_with_recorded_observations():
    """calculator and Calendar on the first 200 rows of each file; code_run (a subprocess per call,
    the slow part) on the first 40, with 0.5 s of CPU per assert so the looping answers end sooner."""
    agreement = measure_agreement(DATA_DIR, limit=200, tools={name: tool for name, tool in TOOLS.items()
                                                              if name != "code_run"})
    fast_code_run = CodeRun(SandboxLimits(test_cpu_s=0.5, test_wall_s=1.5))
    agreement |= measure_agreement(DATA_DIR, limit=40, tools={"code_run": fast_code_run})
    assert set(agreement) == set(TOOLS)
    for tool, (agree, total) in agreement.items():
        assert total >= 40, tool
        assert agree / total >= 0.95, (tool, agree, total)


@needs_data
def test_a_recording_fault_is_explained():
    """calculator_train_311's golden answer is "#### 8.00"; TARA recorded it as 800.0."""
    row = next(row for row in load_tara(DATA_DIR / "calculator_train.jsonl", limit=320)
               if row.id == "calculator_train_311")
    call = row.pos.tool_calls[0]
    observed = run_tool(call.action, call.action_input, row.tool_context(row.pos))
    assert observed == "Both the calculation and the answer are correct."
    assert "predicted answer 800.0" in call.observation
    assert explain_disagreement(ReplayedCall(row, "pos", call, observed)).startswith(
        "recorded with the golden answer's decimal point dropped")
