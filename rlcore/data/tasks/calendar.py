"""Calendar: the three operations of the TARA calendar tool as short prompts.

Prompt forms (dates ISO YYYY-MM-DD, exactly one space between fields):

    "weekday 2023-05-14="          -> "Sunday"      like Calendar.week_day
    "days 2023-05-14 2023-06-01="  -> "18"          like Calendar.day_difference, but signed:
                                                    the second date minus the first
    "after 2023-05-14 +30="        -> "2023-06-13"  like Calendar.target_day; the sign is
                                                    required ("+30", "-30", "+0")

A prompt is well-formed when its dates are real (not 2023-02-30) with years in
start_year..end_year and its offset has no leading zeros, is not "-0" and is
at most max_offset in size. Any two in-range dates make a well-formed "days"
prompt; generated ones lie within max_offset days of each other so that the
numbers stay small. TARA's Calendar.day_difference reports the absolute
difference, which is the answer here when the earlier date comes first.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

from rlcore.data.tasks import Task, near_miss

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE = r"([0-9]{4}-[0-9]{2}-[0-9]{2})"
_WEEKDAY = re.compile(rf"weekday {_DATE}=")
_DAYS = re.compile(rf"days {_DATE} {_DATE}=")
_AFTER = re.compile(rf"after {_DATE} ([-+](?:0|[1-9][0-9]{{0,4}}))=")
_FORMS = ("weekday", "days", "after")


class CalendarTask(Task):
    """Weekdays, day differences and date offsets for dates in start_year..end_year."""

    name = "calendar"

    def __init__(self, start_year: int = 2000, end_year: int = 2030, max_offset: int = 400, seed: int = 0) -> None:
        if not 1000 <= start_year <= 8999:
            raise ValueError(f"start_year={start_year} must be in 1000..8999")
        if not start_year <= end_year <= 8999:
            raise ValueError(f"end_year={end_year} must be in start_year={start_year}..8999")
        if not 0 <= max_offset <= 9999:
            raise ValueError(f"max_offset={max_offset} must be in 0..9999")
        self.first_day = date(start_year, 1, 1)
        self.last_day = date(end_year, 12, 31)
        self.max_offset = max_offset
        self.seed = seed

    def answer(self, prompt: str) -> str | None:
        """The weekday, signed day difference or target date; None if the prompt is malformed."""
        if match := _WEEKDAY.fullmatch(prompt):
            day = self._date(match[1])
            return None if day is None else WEEKDAYS[day.weekday()]
        if match := _DAYS.fullmatch(prompt):
            first, second = self._date(match[1]), self._date(match[2])
            return None if first is None or second is None else str((second - first).days)
        if match := _AFTER.fullmatch(prompt):
            day, offset = self._date(match[1]), int(match[2])
            if day is None or match[2] == "-0" or abs(offset) > self.max_offset:
                return None
            return (day + timedelta(days=offset)).isoformat()
        return None

    def alphabet(self) -> str:
        """The form words, weekday names, digits, "+", "-", "=" and space."""
        return "".join(sorted(set(" ".join(_FORMS + WEEKDAYS) + "0123456789+-=")))

    def _date(self, text: str) -> date | None:
        """The date written as YYYY-MM-DD, or None if it is not a real date in the task's years."""
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return None
        return day if self.first_day <= day <= self.last_day else None

    def _random_prompt(self, rng: random.Random) -> str:
        """A random form with a uniform date and offset; the second "days" date is first + offset, clipped."""
        day = self.first_day + timedelta(days=rng.randrange((self.last_day - self.first_day).days + 1))
        form = rng.choice(_FORMS)
        if form == "weekday":
            return f"weekday {day}="
        offset = rng.randint(-self.max_offset, self.max_offset)
        if form == "after":
            return f"after {day} {offset:+d}="
        other = min(max(day + timedelta(days=offset), self.first_day), self.last_day)
        return f"days {day} {other}="

    def _wrong_answer(self, prompt: str, rng: random.Random) -> str:
        """A plausible wrong answer of the prompt's form.

        Another weekday; a day count off by one or ten, of the wrong sign or with a digit
        changed; or the target date of an offset wrong in one of those ways.
        """
        right = self._answer_of(prompt)
        if prompt.startswith("weekday"):
            return rng.choice([name for name in WEEKDAYS if name != right])
        if prompt.startswith("days"):
            return str(near_miss(int(right), rng))
        match = _AFTER.fullmatch(prompt)
        assert match is not None
        return (date.fromisoformat(match[1]) + timedelta(days=near_miss(int(match[2]), rng))).isoformat()
