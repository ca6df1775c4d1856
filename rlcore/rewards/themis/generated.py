"""More TARA-format pairs, made from the training rows with fresh arguments and real tool calls.

A training row with one call of a Calendar tool is a template: its question, thought and
answers with the call's arguments cut out, and in the answer the observation too:

    Which day will it be 101 days after 2021-11-20?        ->  Which day will it be {n} days after {d0}?
    Action Input: 2021-11-20, 101                          ->  {d0}, {d1}
    The day after 2021-11-20 101 days is 2022-03-01        ->  The day after {d0} {n} days is {value}

A new row fills a template with fresh arguments (dates in the rows' years, offsets of the rows'
sign and size), runs the real tool for the observation, and states it in the positive answer; the
negative answer states a wrong value: most like TARA's (any other weekday, some misspelled; a
random number of days; a random date), some a near miss (a few days off), which only a model that
reads the observation can tell apart. Both answers make the same call, as in TARA. Their trace is
`restate`'s: a target-date answer gets a second call that has the tool compare the dates, and the
rationale restates the answer's value and the tool's result before its verdict.

A calculator row (a GSM8K-style solution with <<expression=value>> annotations) gives new pairs
from its own positive answer: the last step made to end k off ("<<194-2=192>>192 ... #### 192"
becomes "<<194-2+3=195>>195 ... #### 195"), so the arithmetic checks but the answer is wrong; the
real calculator judges both against the row's golden answer.

These teach a small model what 256 rows cannot: to copy the question's arguments into its call
and to compare the answer with the observation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta

from rlcore.rewards.tara import TaraAnswer, TaraRow, ToolCall
from rlcore.rewards.tools import TOOLS, Tool, ToolContext, run_tool
from rlcore.rewards.tools.calculator import SAME_AS_ANSWER
from rlcore.rewards.tools.dates import WEEKDAYS

CALENDAR_TOOLS = ("Calendar.week_day", "Calendar.day_difference", "Calendar.target_day")
MISSPELLED = {"Wednesday": "Wendesday", "Thursday": "Thurday", "Saturday": "Saterday", "Tuesday": "Tuseday"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def stated_value(answer: str) -> str:
    """What an answer states: the number after "####" if it has one, else its last word."""
    final = _FINAL.search(answer)
    if final:
        return final[1]
    words = answer.split()
    return words[-1].rstrip(".") if words else ""


CHECK_THOUGHT = "I need to check how many days lie between the answer's date and the tool's."


def with_date_check(answer: TaraAnswer, tools: Mapping[str, Tool] = TOOLS) -> TaraAnswer:
    """A target-date answer with a second call that lets the tool compare the dates: Calendar.day_difference
    between the answer's date and the one the first call returned ("0" when they are the same day). A tiny
    model compares two one-token numbers reliably, two ten-digit dates hardly at all."""
    calls = answer.tool_calls
    if not calls or calls[-1].action != "Calendar.target_day" or calls[-1].thought == CHECK_THOUGHT:
        return answer
    action_input = f"{stated_value(answer.answer)}, {calls[-1].observation}"
    check = ToolCall(CHECK_THOUGHT, "Calendar.day_difference", action_input,
                     run_tool("Calendar.day_difference", action_input, ToolContext(), tools))
    return replace(answer, tool_calls=(*calls, check))


def restated_rationale(answer: TaraAnswer, right: bool) -> str:
    """A short rationale that puts the answer's value next to the tool's result, then the verdict."""
    calls = answer.tool_calls
    check = calls[-1] if calls and calls[-1].thought == CHECK_THOUGHT else None
    result = (calls[:-1] if check else calls)[-1].observation if calls else "nothing"
    apart = f", {check.observation} days apart" if check else ""
    verdict = "right" if right else "wrong"
    return f"The answer says {stated_value(answer.answer)} and the tool says {result}{apart}, so the answer is {verdict}."


def with_answer_reference(row: TaraRow, answer: TaraAnswer, tools: Mapping[str, Tool] = TOOLS) -> TaraAnswer:
    """A calculator answer whose call says "Same as the answer" instead of copying the answer's annotations
    (the tool reads them from the answer, as code_run reads its code): a tiny model cannot copy a dozen
    <<expr=value>> steps, and the observation is the same."""
    calls = tuple(replace(call, action_input=SAME_AS_ANSWER,
                          observation=run_tool("calculator", SAME_AS_ANSWER, row.tool_context(answer), tools))
                  if call.action == "calculator" else call for call in answer.tool_calls)
    return replace(answer, tool_calls=calls)


def restate(row: TaraRow) -> TaraRow:
    """The row with calculator calls that refer to the answer (`with_answer_reference`), a date check after
    a target-date call (`with_date_check`), and both rationales replaced by `restated_rationale`'s."""
    pos = with_date_check(with_answer_reference(row, row.pos))
    neg = with_date_check(with_answer_reference(row, row.neg))
    return replace(row, pos=replace(pos, rationale=restated_rationale(pos, True)),
                   neg=replace(neg, rationale=restated_rationale(neg, False)))


@dataclass(frozen=True)
class _Template:
    tool: str
    question: str
    thought: str
    answer: str
    negative_offset: bool


def _cut(text: str, values: Mapping[str, str]) -> str | None:
    """`text` with each value replaced by its "{key}"; None if a value is missing from it."""
    text = text.replace("{", "{{").replace("}", "}}")
    for key, value in values.items():
        if value not in text:
            return None
        text = text.replace(value, "{" + key + "}")
    return text


def calendar_templates(rows: list[TaraRow]) -> list[_Template]:
    """The templates of the rows with one Calendar call whose arguments the question names."""
    templates = []
    for row in rows:
        if len(row.pos.tool_calls) != 1 or row.pos.tool_calls[0].action not in CALENDAR_TOOLS:
            continue
        call = row.pos.tool_calls[0]
        args = [a.strip() for a in call.action_input.split(",")]
        values = {f"d{i}": a for i, a in enumerate(args) if _DATE.match(a)}
        offsets = [a for a in args if not _DATE.match(a)]
        if offsets:
            values["n"] = offsets[0].lstrip("-")
        question, thought = _cut(row.question, values), _cut(call.thought, values)
        answer = _cut(row.pos.answer, {**values, "value": call.observation})
        if question and thought and answer and answer.endswith("{value}"):
            templates.append(_Template(call.action, question, thought, answer,
                                       bool(offsets) and offsets[0].startswith("-")))
    return templates


def _wrong(tool: str, right: str, rng: random.Random, first: date, last: date) -> str:
    near = rng.random() < 0.3
    if tool == "Calendar.week_day":
        other = rng.choice([d for d in WEEKDAYS if d != right])
        return MISSPELLED.get(other, other) if rng.random() < 0.2 else other
    if tool == "Calendar.day_difference":
        value = int(right)
        wrong = value + rng.choice((-1, 1)) * rng.randint(1, 30) if near else rng.randint(1, 1000)
        return str(abs(wrong)) if abs(wrong) != value else str(value + 1)
    day = date.fromisoformat(right)
    wrong = (day + timedelta(days=rng.choice((-1, 1)) * rng.randint(1, 30)) if near
             else first + timedelta(days=rng.randrange((last - first).days)))
    return (wrong if wrong != day else day + timedelta(days=1)).isoformat()


def generated_calendar_rows(templates: list[_Template], n: int, seed: int, tools: Mapping[str, Tool] = TOOLS,
                            years: tuple[int, int] = (2000, 2022), max_offset: int = 363) -> list[TaraRow]:
    """`n` new pairs from the templates: fresh dates and offsets, the real tool's observation."""
    if not templates:
        raise ValueError("no Calendar row to make templates from: the data has no single Calendar call "
                         "whose arguments its question names")
    rng = random.Random(seed)
    first, last = date(years[0], 1, 1), date(years[1], 12, 31)
    rows = []
    for index in range(n):
        template = rng.choice(templates)
        dates = [(first + timedelta(days=rng.randrange((last - first).days))).isoformat() for _ in range(2)]
        offset = rng.randint(1, max_offset)
        if template.tool == "Calendar.week_day":
            values, action_input = {"d0": dates[0]}, dates[0]
        elif template.tool == "Calendar.day_difference":
            values, action_input = {"d0": dates[0], "d1": dates[1]}, f"{dates[0]}, {dates[1]}"
        else:
            signed = -offset if template.negative_offset else offset
            values, action_input = {"d0": dates[0], "n": str(offset)}, f"{dates[0]}, {signed}"
        observation = run_tool(template.tool, action_input, ToolContext(), tools)
        wrong = _wrong(template.tool, observation, rng, first, last)
        call = ToolCall(template.thought.format(**values), template.tool, action_input, observation)
        pos = TaraAnswer(template.answer.format(**values, value=observation), 1.0, (call,), "")
        neg = TaraAnswer(template.answer.format(**values, value=wrong), -1.0, (call,), "")
        rows.append(restate(TaraRow(f"generated_calendar_{index}", template.question.format(**values), pos, neg,
                                    (), f"generated:{index}")))
    return rows


_LAST_ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>([^,<>]*)$")


def generated_calculator_rows(rows: list[TaraRow], n: int, seed: int, tools: Mapping[str, Tool] = TOOLS
                              ) -> list[TaraRow]:
    """`n` new pairs from calculator rows' positive answers, whose last step is made to end off by k:
    "<<194-2=192>>192 ... #### 192" becomes "<<194-2+3=195>>195 ... #### 195"; the real tool judges both."""
    sources = []
    for row in rows:
        calls = row.pos.tool_calls
        last = _LAST_ANNOTATION.search(calls[0].action_input) if len(calls) == 1 and calls[0].action == "calculator" else None
        final = _FINAL.search(row.pos.answer)
        if last and final and last[0] in row.pos.answer and _number(last[2]) == _number(final[1]) is not None:
            sources.append((row, last, final))
    if not sources:
        raise ValueError("no calculator row whose last <<expression=value>> annotation gives its '#### N' answer")
    rng = random.Random(seed)
    out = []
    for index in range(n):
        row, last, final = rng.choice(sources)
        k = rng.choice((-1, 1)) * rng.choice((1, 2, 3, 4, 5, 10, 20))
        value = _number(final[1]) + k
        shown = str(int(value)) if value == int(value) else str(value)
        annotation = f"<<{last[1]}{'+' if k > 0 else '-'}{abs(k)}={shown}>>{shown}"
        call = row.pos.tool_calls[0]
        answer = row.pos.answer.replace(last[0], annotation)
        answer = _FINAL.sub(f"#### {shown}", answer)
        action_input = call.action_input[: last.start()] + annotation
        context = ToolContext(answer=answer, reference_answer=row.pos.answer)
        neg_call = ToolCall(call.thought, "calculator", action_input, run_tool("calculator", action_input, context, tools))
        pos_call = replace(call, observation=run_tool("calculator", call.action_input, row.tool_context(row.pos), tools))
        pos = replace(row.pos, tool_calls=(pos_call,))
        neg = TaraAnswer(answer, 0.0, (neg_call,), "")
        out.append(restate(replace(row, id=f"generated_calculator_{index}", pos=pos, neg=neg,
                                   source=f"generated:{index}")))
    return out


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def generated_rows(rows: list[TaraRow], n: int, seed: int, tools: Mapping[str, Tool] = TOOLS) -> list[TaraRow]:
    """`n` generated pairs for the tools the rows call: Calendar rows, calculator rows, or both (split evenly)."""
    templates = calendar_templates(rows)
    calculator = [r for r in rows if r.pos.tool_calls and r.pos.tool_calls[0].action == "calculator"]
    kinds = [kind for kind, present in (("calendar", templates), ("calculator", calculator)) if present]
    if not kinds:
        raise ValueError("generated_pairs needs Calendar or calculator rows to make pairs from; the data has none")
    share = -(-n // len(kinds))
    out = []
    if "calendar" in kinds:
        out += generated_calendar_rows(templates, share, seed, tools)
    if "calculator" in kinds:
        out += generated_calculator_rows(calculator, share, seed, tools)
    return out[:n]
