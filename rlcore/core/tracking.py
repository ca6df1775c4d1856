"""Metrics to a JSONL file in the run folder and, optionally, to Weights & Biases."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class Tracker:
    """Writes one JSON line per `log` call to `<run_dir>/metrics.jsonl`; mirrors to wandb if enabled."""

    def __init__(self, run_dir: str | Path, config: dict | None = None, use_wandb: bool = False,
                 wandb_mode: str = "offline", project: str = "rlcore", name: str | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self._start = time.time()
        self._wandb = None
        if use_wandb and wandb_mode != "disabled":
            import wandb

            self._wandb = wandb.init(project=project, name=name or self.run_dir.name, dir=str(self.run_dir),
                                     mode=wandb_mode, config=config or {}, reinit="finish_previous")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, "time": round(time.time() - self._start, 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """A table of rows (e.g. evaluation samples) to wandb, when enabled (the JSONL copy is the caller's)."""
        if self._wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            self._wandb.log({name: wandb.Table(columns=columns, data=[[str(r.get(c)) for c in columns]
                                                                       for r in rows])}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows a Tracker wrote."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class PhaseTimer:
    """Wall time per named phase of a training step: `with timer.phase("generate"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def phase(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed()

    def pop(self) -> dict[str, float]:
        """The phase times since the last pop, as `time/<phase>` metrics."""
        out = {f"time/{name}": round(value, 4) for name, value in self.seconds.items()}
        self.seconds = {}
        return out


def new_run_dir(parent: str, name: str, algorithm: str) -> Path:
    """`<parent>/<name>`, or `<parent>/<algorithm>-<timestamp>` when no name is given."""
    path = Path(parent) / (name or f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.mkdir(parents=True, exist_ok=True)
    return path
