"""User data: the `data` section of every algorithm (`load_data`, `RowStream`), and files of prompts,
preference pairs and ranked responses with fixed schemas (`load_rows`).

`load_data(DataConfig, "train" | "eval")` reads a source with the `datasets` library: a local
JSONL / JSON / Parquet / CSV file, a folder written by `Dataset.save_to_disk`, a Hugging Face dataset
name (`subset`, split), or `task:<name>`, a built-in task (rlcore.data.tasks). Columns are mapped by the
config's keys (dotted keys read nested objects: "pos_answer.answer") to rows

    {"prompt": str | [{"role", "content"}, ...], "answer": str | None, "chosen": str | None, "rejected": str | None}

A row whose prompt is missing or not text, or whose mapped columns have the wrong type, raises `DataError`
naming the file and row, or with `on_error: skip` is dropped and counted; prompts longer than
`max_prompt_tokens` are dropped and counted. `RowStream` hands out the rows of each step in a seeded order
that depends on the step alone, so a resumed run continues at the same position.

`load_rows(path, schema)`: every row is checked against its schema. A malformed row raises `DataError`
naming the file and line (JSONL) or row (Parquet), or, with `on_error="skip"`,
is dropped and counted.

    prompts      {"prompt": str}                      (extra keys kept, e.g. "answer")
    preferences  {"prompt": str, "chosen": str, "rejected": str}
    rankings     {"query": str, "responses": [str], "scores": [number]}   (the RRHF repository's format)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import datasets

from rlcore.core.config import DataConfig
from rlcore.data.tasks import Task, get_task

TASK_PREFIX = "task:"
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


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


# ---------------------------------------------------------------------------- the data section


@dataclass
class Data:
    """Rows of one split of a `data` section and what was dropped on the way."""

    rows: list[dict]
    source: str
    task: Task | None = None
    """The built-in task, for task:<name> sources (its verifier is the rule reward)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows dropped: {"malformed": n, "too_long": n}."""

    @property
    def prompts(self) -> list:
        return [row["prompt"] for row in self.rows]

    @property
    def answers(self) -> list[str] | None:
        """Every row's reference answer, or None when some row has none."""
        answers = [row["answer"] for row in self.rows]
        return None if any(a is None for a in answers) else answers


def task_name(source: str) -> str | None:
    """The task of a `task:<name>` source; None for any other source."""
    return source[len(TASK_PREFIX) :] if source.startswith(TASK_PREFIX) else None


def load_data(config: DataConfig, split: Literal["train", "eval"], size: int | None = None,
              prompt_tokens: Callable[[object], int] | None = None) -> Data:
    """The rows of `config.train` (split "train") or `config.eval` ("eval").

    `size`: rows wanted from a task source (files give all their rows). `prompt_tokens(prompt)`: its
    length after formatting, to drop prompts over `max_prompt_tokens` (no check without it). An empty
    `eval` is the task's held-out split, or the last `eval_size` rows of the shuffled train file (which
    `load_data(config, "train")` then leaves out).
    """
    source = config.train if split == "train" or not config.eval else config.eval
    name = task_name(source)
    if name is not None:
        task = get_task(name, seed=config.seed)
        if split == "eval":
            rows = [{"prompt": e.prompt, "answer": e.answer, "chosen": e.answer, "rejected": None}
                    for e in task.examples("heldout", config.eval_size)]
        else:
            rows = [{**pair, "answer": pair["chosen"]}
                    for pair in task.preference_pairs("train", size or config.eval_size, config.seed)]
        return Data(rows, source, task)
    rows, skipped = [], {"malformed": 0, "too_long": 0}
    from_eval = split == "eval" and bool(config.eval)
    for where, raw, problem in _raw_rows(source, config, config.eval_split if from_eval else config.train_split):
        row, problem = ({}, problem) if problem else _map_row(raw, config)
        if problem is None and prompt_tokens is not None and prompt_tokens(row["prompt"]) > config.max_prompt_tokens:
            skipped["too_long"] += 1
            continue
        if problem is None:
            rows.append(row)
        elif config.on_error == "skip":
            skipped["malformed"] += 1
        else:
            raise DataError(f"{source}:{where}: {problem} (data.on_error=skip drops such rows)")
    if config.shuffle:
        random.Random(f"{config.seed}").shuffle(rows)
    if not config.eval:  # the eval rows are the last eval_size of the shuffled file
        held = min(config.eval_size, len(rows) // 2)
        rows = rows[len(rows) - held :] if split == "eval" else rows[: len(rows) - held]
    elif split == "eval":
        rows = rows[: config.eval_size]
    if not rows:
        raise DataError(f"{source}: no usable rows ({skipped['malformed']} malformed, {skipped['too_long']} "
                        f"longer than data.max_prompt_tokens={config.max_prompt_tokens})")
    return Data(rows, source, None, skipped)


def _raw_rows(source: str, config: DataConfig, split: str):
    """(location, row, parse problem) for every row of a file, a save_to_disk folder or a Hugging Face dataset."""
    path = Path(source)
    if path.suffix in FILE_TYPES and not path.is_file():
        raise DataError(f"{source}: no such file")
    if path.suffix == ".jsonl" or (path.suffix == ".json" and _is_json_lines(path)):
        yield from _read(path)
        return
    if path.is_file():
        if path.suffix not in FILE_TYPES:
            raise DataError(f"{source}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_TYPES)}")
        dataset = datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    elif path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataError(f"{source}: no split {split!r}; it has {list(dataset)}")
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(source, config.subset or None, split=split)
    for i, row in enumerate(dataset):
        yield f"row {i}", row, None


def _is_json_lines(path: Path) -> bool:
    with path.open() as f:
        return f.read(1) != "["


def column(row: dict, key: str):
    """`row[key]`; a dotted key reads nested objects ("pos_answer.answer"); None when absent."""
    value = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _map_row(raw, config: DataConfig) -> tuple[dict, str | None]:
    """The row in the common form, or a problem naming the column."""
    if not isinstance(raw, dict):
        return {}, f"expected a JSON object, got {raw!r}"[:200]
    if config.messages_key:
        prompt = column(raw, config.messages_key)
        if (not isinstance(prompt, list) or not prompt or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            return {}, f"{config.messages_key!r} must be a non-empty list of {{role, content}} turns, got {prompt!r}"[
                :300]
    else:
        prompt = column(raw, config.prompt_key)
        if not isinstance(prompt, str) or not prompt.strip():
            return {}, f"{config.prompt_key!r} must be a non-empty string, got {prompt!r}"[:300]
    row = {"prompt": prompt}
    for field_name, key in (("answer", config.answer_key), ("chosen", config.chosen_key),
                            ("rejected", config.rejected_key)):
        value = column(raw, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            return {}, f"{key!r} must be a string or a number, got {value!r}"[:300]
        row[field_name] = value
    return row, None


def read_texts(source: str, keys: list[str]) -> list[str]:
    """Every non-empty string under `keys` (dotted for nested objects) in every row of a local file or saved
    dataset: the corpus a tokenizer is trained on."""
    config = DataConfig(train=source)
    texts = []
    for _, row, problem in _raw_rows(source, config, config.train_split):
        if problem is None and isinstance(row, dict):
            texts += [v for v in (column(row, key) for key in keys) if isinstance(v, str) and v.strip()]
    if not texts:
        raise DataError(f"{source}: no text under the keys {keys}")
    return texts


class RowStream:
    """The rows of each step: `take(step, n)` is rows (step-1)·n .. step·n−1 of an endless sequence of
    passes over the data, each pass in its own seeded order. It depends on the step alone, so a resumed
    run takes the same rows a straight run would."""

    def __init__(self, rows: list[dict], seed: int, shuffle: bool) -> None:
        self.rows, self.seed, self.shuffle = rows, seed, shuffle
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            if self.shuffle and epoch > 0:  # pass 0 is the (already shuffled) load order
                random.Random(f"{self.seed}:pass{epoch}").shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def take(self, step: int, n: int) -> list[dict]:
        positions = range((step - 1) * n, step * n)
        return [self.rows[self._order(p // len(self.rows))[p % len(self.rows)]] for p in positions]

    def passes(self, step: int, n: int) -> float:
        """How many passes over the data `step` steps of `n` rows make."""
        return step * n / len(self.rows)


def write_task_data(name: str, folder: str | Path, train: int, heldout: int, seed: int = 0) -> dict[str, str]:
    """A built-in task's `train` train prompts and `heldout` held-out prompts, with their answers and a
    plausible wrong one, as <folder>/train.parquet and <folder>/heldout.parquet (columns prompt, answer,
    chosen, rejected)."""
    task, folder = get_task(name), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, size in (("train", train), ("heldout", heldout)):
        rows = [{**pair, "answer": pair["chosen"]} for pair in task.preference_pairs(split, size, seed)]
        paths[split] = str(folder / f"{split}.parquet")
        datasets.Dataset.from_list(rows).to_parquet(paths[split])
    return paths


def write_task_rankings(name: str, path: str | Path, n: int, seed: int = 0) -> str:
    """A built-in task's first `n` train prompts ranked (`Task.rankings`: the answer and two plausible wrong
    ones) as a JSONL file of {"query", "responses", "scores"}: RRHF's 1-model input."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in get_task(name).rankings("train", n, seed)))
    return str(path)


def prompt_text(prompt) -> str:
    """A prompt as plain text for rewards and logs: the text itself, or the chat turns as "role: content"
    lines (a single user turn is just its content)."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
