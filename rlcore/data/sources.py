"""User data: prompts, preference pairs and ranked responses from local JSONL or Parquet.

Every row is checked against its schema. A malformed row raises `DataError`
naming the file and line (JSONL) or row (Parquet), or, with `on_error="skip"`,
is dropped and counted.

    prompts      {"prompt": str}                      (extra keys kept, e.g. "answer")
    preferences  {"prompt": str, "chosen": str, "rejected": str}
    rankings     {"query": str, "responses": [str], "scores": [number]}   (the RRHF repository's format)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import datasets


class DataError(ValueError):
    """A malformed data file or row; the message names the file and line."""


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        return f"{key!r} must be a non-empty string, got {value!r}"
    return None


def check_prompt(row: dict) -> str | None:
    return _text(row, "prompt")


def check_preference(row: dict) -> str | None:
    for key in ("prompt", "chosen", "rejected"):
        if problem := _text(row, key):
            return problem
    return None


def check_ranking(row: dict) -> str | None:
    if problem := _text(row, "query"):
        return problem
    responses, scores = row.get("responses"), row.get("scores")
    if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
        return f"'responses' must be a non-empty list of strings, got {responses!r}"
    if not isinstance(scores, list) or len(scores) != len(responses):
        return f"'scores' must be a list as long as 'responses' ({len(responses)}), got {scores!r}"
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        return f"'scores' must be finite numbers, got {scores!r}"
    return None


SCHEMAS: dict[str, Callable[[dict], str | None]] = {
    "prompts": check_prompt,
    "preferences": check_preference,
    "rankings": check_ranking,
}


@dataclass
class Loaded:
    rows: datasets.Dataset
    skipped: int
    """Malformed rows dropped (on_error="skip")."""


def load_rows(path: str | Path, schema: str, on_error: Literal["raise", "skip"] = "raise") -> Loaded:
    """Load a JSONL (.jsonl/.json) or Parquet (.parquet) file and check every row against `schema`."""
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; allowed: {sorted(SCHEMAS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    check = SCHEMAS[schema]
    rows, skipped = [], 0
    for where, row, problem in _read(path):
        problem = problem or (check(row) if isinstance(row, dict) else f"expected a JSON object, got {row!r}")
        if problem is None:
            rows.append(row)
        elif on_error == "skip":
            skipped += 1
        else:
            raise DataError(f"{path}:{where}: {problem}")
    if not rows:
        raise DataError(f"{path}: no valid {schema} rows ({skipped} malformed)")
    return Loaded(datasets.Dataset.from_list(rows), skipped)


def _read(path: Path):
    """Yield (location, row, parse problem) for every row of the file."""
    if path.suffix == ".parquet":
        for i, row in enumerate(datasets.Dataset.from_parquet(str(path))):
            yield f"row {i}", row, None
        return
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line), None
            except json.JSONDecodeError as err:
                yield f"line {number}", None, f"not valid JSON ({err.msg})"
