"""The TARA tools on hand-worked inputs, and the registry's promise never to raise."""

import pytest

from rlcore.rewards.tools import TOOLS, ReplayTool, ToolContext, ToolError, observe, parse_action, run_tool
from rlcore.rewards.tools.calculator import evaluate, golden_number

# ---- calculator: plain arithmetic ------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2+3*4", "14"),  # precedence: 3*4 = 12, + 2
        ("(2+3)*4", "20"),
        ("7/2", "3.5"),  # true division, as numexpr did in TARA
        ("17//5", "3"),
        ("17%5", "2"),
        ("2**10", "1024"),
        ("2**-1", "0.5"),
        ("-(3-5)*2", "4"),  # -(-2)*2
        ("-2**2", "-4"),  # Python precedence: -(2**2)
        ("1.5*4", "6.0"),
        (" 48 / 12 ", "4.0"),
    ],
)
def test_calculator_evaluates_arithmetic(expression, value):
    assert run_tool("calculator", expression) == value


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("__import__('os')", "function calls are not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("x + 1", "names are not allowed: 'x'"),
        ("(1).real", "attributes are not allowed"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("[1] * 3", "unsupported syntax"),
        ("1 < 2", "unsupported syntax"),
        ("2 ^ 3", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
        ("9**9**9", "exponent too large"),
        ("10**5000", "exponent too large"),
        ("2**100000", "exponent too large"),
        ("(10**1000)**5", "exponent too large"),
        ("10.0**400", "result too large"),
        ("1e308 * 10", "result too large"),
        ("1e999 - 1e999", "result too large"),
        ("1/0", "division by zero"),
        ("(-8)**0.5", "not a real number"),
        ("2 +", "not an arithmetic expression"),
        ("1" * 3000, "longer than"),
    ],
)
def test_calculator_refuses_everything_but_arithmetic(expression, complaint):
    observation = run_tool("calculator", expression)
    assert observation.startswith("Error: calculator:")
    assert complaint in observation


def test_calculator_bounds_integer_size_not_only_exponents():
    """(2**4000) * (2**4000) has 8001 bits > MAX_INT_BITS = 4096."""
    with pytest.raises(ToolError, match="result too large"):
        evaluate("2**4000 * 2**4000")


# ---- calculator: TARA's annotation check -----------------------------------------------

GOLD_192 = ToolContext(reference_answer="Charlene is 2 * 62 cm = <<2*62=124>>124 cm tall.\n#### 192")


def test_calculator_correct_process_and_answer():
    """2*62 = 124, 70+124 = 194, 194-2 = 192 = the golden 192."""
    observation = run_tool("calculator", "<<2*62=124>>124, <<70+124=194>>194, <<194-2=192>>192", GOLD_192)
    assert observation == "Both the calculation and the answer are correct."


def test_calculator_correct_process_wrong_answer():
    """Every annotation is right (62+70 = 132, 132-2 = 130) but the last value 130 is not 192."""
    observation = run_tool("calculator", "<<62+70=132>>132, <<2*62=124>>124, <<132-2=130>>130", GOLD_192)
    assert observation == (
        "The calculation process is correct, but the resulting answer 130 does not match the predicted answer 192.0."
    )


def test_calculator_wrong_process_reports_the_computed_value():
    """5/3 = 1.666..., not 1.66667; 25/1.66667 = 14.99997000006, not 15 (TARA's recorded row 2)."""
    observation = run_tool("calculator", "<<5/3=1.66667>>1.66667, <<25/1.66667=15>>15",
                           ToolContext(reference_answer="#### 15"))
    assert observation == (
        "Both the calculation and the answer are incorrect. Details: An unexpected error occurred during the "
        "calculation. The calculated answer 14.99997000006 does not match the predicted answer 15.0."
    )


def test_calculator_wrong_process_right_answer():
    """2*2 is 4, not 5, but the last annotation 6*2 = 12 matches the golden 12."""
    observation = run_tool("calculator", "<<2*2=5>>5, <<6*2=12>>12", ToolContext(reference_answer="12"))
    assert observation == (
        "The calculation process is incorrect, but the answer matches the predicted answer. "
        "Details: An unexpected error occurred during the calculation."
    )


def test_calculator_empty_input_and_missing_golden_answer():
    observation = run_tool("calculator", "", ToolContext(reference_answer="#### 7"))
    assert observation.endswith("The calculated answer None does not match the predicted answer 7.0.")
    assert run_tool("calculator", "<<2*2=4>>4") == "No valid answer."


def test_golden_number_reads_gsm8k_endings():
    assert golden_number("... so 12 in all.\n#### 12") == 12.0
    assert golden_number("#### 8.00") == 8.0
    assert golden_number("#### 1,200") == 1200.0
    assert golden_number("-3") == -3.0
    assert golden_number("no number here") is None


# ---- Calendar ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "action_input", "observation"),
    [
        ("Calendar.week_day", "2008-06-16", "Monday"),
        ("Calendar.week_day", "2024-02-29", "Thursday"),  # leap day
        ("Calendar.week_day", " 2000-01-01 ", "Saturday"),
        # 2024 is a leap year: February has 29 days
        ("Calendar.day_difference", "2024-03-01, 2024-02-01", "29"),
        ("Calendar.day_difference", "2024-02-01, 2024-03-01", "29"),  # absolute, like TARA's
        ("Calendar.day_difference", "2015-11-05,2011-01-11", "1759"),
        # Dec 18 + 13 = Dec 31; + 31 (Jan) + 28 (Feb) + 31 (Mar) = 103; + 7 = Apr 7: 110 days
        ("Calendar.target_day", "2000-12-18, 110", "2001-04-07"),
        ("Calendar.target_day", "2013-02-26, -210", "2012-07-31"),
        ("Calendar.target_day", "2023-03-04, 0", "2023-03-04"),
    ],
)
def test_calendar_tools(tool, action_input, observation):
    assert run_tool(tool, action_input) == observation


@pytest.mark.parametrize(
    ("tool", "action_input", "complaint"),
    [
        ("Calendar.week_day", "2013-02-30", "expects dates as YYYY-MM-DD"),
        ("Calendar.week_day", "2013/02/26", "expects dates as YYYY-MM-DD"),
        ("Calendar.week_day", "2013-02-26, 2013-02-27", "expects 'YYYY-MM-DD'"),
        ("Calendar.target_day", "2013-02-26", "expects 'YYYY-MM-DD, N'"),
        ("Calendar.target_day", "2013-02-26, ten", "whole number of days"),
        ("Calendar.target_day", "9999-12-31, 1", "out of range"),
        ("Calendar.target_day", "2013-02-26, 99999999999", "out of range"),
        ("Calendar.day_difference", "2013-02-26", "expects 'YYYY-MM-DD, YYYY-MM-DD'"),
    ],
)
def test_calendar_malformed_input_is_an_observation(tool, action_input, complaint):
    observation = run_tool(tool, action_input)
    assert observation.startswith(f"Error: {tool}:")
    assert complaint in observation


# ---- registry ----------------------------------------------------------------------------


def test_registry_names():
    assert sorted(TOOLS) == ["Calendar.day_difference", "Calendar.target_day", "Calendar.week_day",
                             "calculator", "code_run"]
    assert all(tool.name == name for name, tool in TOOLS.items())


def test_unknown_tool_is_an_observation():
    observation = run_tool("Foo", "1+1")
    assert observation.startswith("Error: unknown tool 'Foo'; available: ")
    assert all(name in observation for name in TOOLS)


def test_tool_failure_and_bad_input_are_observations():
    class Broken:
        name = "broken"

        def run(self, action_input, context=None):
            raise RuntimeError("disk on fire")

    assert run_tool("broken", "x", tools={"broken": Broken()}) == "Error: broken failed: RuntimeError: disk on fire"
    assert run_tool("calculator", None).startswith("Error: calculator: the action input must be text")
    assert run_tool(None, "1").startswith("Error: unknown tool None")


def test_code_run_without_tests_or_code_is_an_observation():
    assert "needs the question's test_list" in run_tool("code_run", "def f(): pass")
    assert "has no code" in run_tool("code_run", "Same as the answer", ToolContext(test_list=("assert True",)))


def test_code_run_through_the_registry():
    context = ToolContext(answer="def add(a, b):\n    return a + b\n", test_list=("assert add(1, 2) == 3",))
    assert run_tool("code_run", "Same as the answer", context) == "The pass rate is 1.0. All test cases passed."


# ---- parse_action ------------------------------------------------------------------------


def test_parse_action_reads_the_tara_form():
    text = ("Thought: I need to search what day of the week is 2008-06-16.\n"
            "Action: Calendar.week_day\nAction Input: 2008-06-16\nObservation: Monday\nRationale: ...")
    assert parse_action(text) == ("I need to search what day of the week is 2008-06-16.",
                                  "Calendar.week_day", "2008-06-16")


def test_parse_action_multiline_input_quotes_and_missing_thought():
    code = "def f(x):\n    return x\n"
    parsed = parse_action(f"Action: code_run\nAction Input: {code}")
    assert parsed == ("", "code_run", code.strip())
    assert parse_action('Action:calculator\nAction Input: "2+2"').action_input == "2+2"


@pytest.mark.parametrize(
    "text",
    ["", "Thought: Do I need to use a tool? No\nFinished.", "Action: calculator\n", "Action: \nAction Input: 1",
     "Action Input: 1+1"],
)
def test_parse_action_without_an_action(text):
    assert parse_action(text) is None


def test_observe_never_raises():
    assert observe("Thought: hmm\nAction: calculator\nAction Input: 6*7") == "42"
    assert observe("I will just answer.").startswith("Error: no 'Action:' line")
    assert observe("Action: calculator\nAction Input: import os").startswith("Error: calculator:")


# ---- replays -----------------------------------------------------------------------------


def test_replay_tool_answers_only_what_was_recorded():
    weather = ReplayTool("history_weather")
    weather.record("Riyadh, 2023-05-07", "The weather for Riyadh on 2023-05-07 is: sunny")
    assert weather.run("riyadh ,  2023-05-07") == "The weather for Riyadh on 2023-05-07 is: sunny"
    assert run_tool("history_weather", "Paris, 2023-05-07", tools={"history_weather": weather}) == (
        "Replay: no recorded observation for history_weather with input 'Paris, 2023-05-07'"
    )
    weather.record("Riyadh, 2023-05-07", "something else")
    assert weather.conflicts == 1
    assert weather.run("Riyadh, 2023-05-07").endswith("sunny")  # the first recording is kept
