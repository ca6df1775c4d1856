"""TARA's Calendar tools, with the input and output formats its rows use.

    Calendar.week_day        "2008-06-16"              -> "Monday"
    Calendar.day_difference  "2015-11-05, 2011-01-11"  -> "1759"        (absolute, in days)
    Calendar.target_day      "2013-02-26, -210"        -> "2012-07-31"  (the date plus N days)

Dates are YYYY-MM-DD (read with strptime, as TARA's tool does); fields are separated by a comma and optional spaces.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from rlcore.rewards.tools.base import NO_CONTEXT, ToolContext, ToolError

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _parse_date(text: str, tool: str) -> date:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d").date()
    except ValueError as error:
        raise ToolError(f"{tool} expects dates as YYYY-MM-DD, got {text.strip()!r}") from error


def _fields(action_input: str, count: int, tool: str, usage: str) -> list[str]:
    fields = [field.strip() for field in action_input.split(",")]
    if len(fields) != count:
        raise ToolError(f"{tool} expects {usage!r}, got {action_input.strip()!r}")
    return fields


class WeekDay:
    """`Calendar.week_day`: the weekday of a date."""

    name = "Calendar.week_day"

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        (day,) = _fields(action_input, 1, self.name, "YYYY-MM-DD")
        return WEEKDAYS[_parse_date(day, self.name).weekday()]


class DayDifference:
    """`Calendar.day_difference`: how many days lie between two dates (never negative)."""

    name = "Calendar.day_difference"

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        first, second = _fields(action_input, 2, self.name, "YYYY-MM-DD, YYYY-MM-DD")
        return str(abs((_parse_date(first, self.name) - _parse_date(second, self.name)).days))


class TargetDay:
    """`Calendar.target_day`: the date N days after (N < 0: before) a date."""

    name = "Calendar.target_day"

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        day, offset = _fields(action_input, 2, self.name, "YYYY-MM-DD, N")
        try:
            days = int(offset)
        except ValueError as error:
            raise ToolError(f"{self.name} expects a whole number of days, got {offset!r}") from error
        try:
            return (_parse_date(day, self.name) + timedelta(days=days)).isoformat()
        except OverflowError as error:
            raise ToolError(f"{self.name}: the date is out of range") from error
