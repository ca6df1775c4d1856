"""Resumable run folders.

    <run_dir>/checkpoints/step_000010/   one folder per checkpoint; the actors save their parts in it
                                         (e.g. policy/, critic/: DeepSpeed checkpoints with optimizer and schedule)
    <run_dir>/checkpoints/step_000010/state.json   driver state: step, data position, controller values, RNG states
    <run_dir>/checkpoints/step_000010/hf/          the policy as a Hugging Face folder (rlcore.models.export)
    <run_dir>/checkpoints/latest         name of the newest complete checkpoint, written last
    <run_dir>/final/                     the policy at the end of the run, as a Hugging Face folder

A checkpoint counts only once `latest` names it, so a run killed while saving
resumes from the previous one. Older checkpoint folders are deleted after a
newer one is complete.
"""

from __future__ import annotations

import base64
import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import torch


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    path = Path(run_dir) / "checkpoints" / f"step_{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(run_dir: str | Path, step: int | None = None) -> Path:
    """Where a run's Hugging Face export goes: <run_dir>/final, or the `hf` folder of checkpoint `step`."""
    if step is None:
        return Path(run_dir) / "final"
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}" / "hf"


def exported_model(run_dir: str | Path, step: int | None = None) -> Path:
    """The Hugging Face folder a run exported at its end (or at checkpoint `step`); a clear error if there is none."""
    folder = model_dir(run_dir, step)
    if (folder / "config.json").exists():
        return folder
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}")
    steps = sorted(int(p.name.removeprefix("step_")) for p in (Path(run_dir) / "checkpoints").glob("step_*")
                   if (p / "state.json").exists())
    have = f"its checkpoints: steps {steps}" if steps else "it has no checkpoint"
    if step is None:
        raise FileNotFoundError(f"{run_dir} has no final export ({folder}): the run did not finish (or ran before "
                                f"rlcore exported models); {have}")
    if folder.parent.is_dir():
        raise FileNotFoundError(f"checkpoint {folder.parent} has no Hugging Face folder ({folder.name}/): it was "
                                "saved before rlcore exported checkpoints and holds DeepSpeed shards only, which "
                                "rlcore export does not convert")
    raise FileNotFoundError(f"{run_dir} has no checkpoint of step {step}; {have} (only the newest is kept)")


def commit(run_dir: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write the driver state of checkpoint `step` (after the actors saved theirs) and make it the latest."""
    folder = checkpoint_dir(run_dir, step)
    state = {**state, "step": step, "rng": _encode((random.getstate(), torch.get_rng_state()))}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    latest = Path(run_dir) / "checkpoints" / "latest"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(folder.name)
    tmp.replace(latest)  # atomic: `latest` names a complete checkpoint or the previous one
    for old in folder.parent.glob("step_*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest complete checkpoint folder of a run and its driver state (RNG states restored)."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from (no {pointer})")
    folder = pointer.parent / pointer.read_text().strip()
    state = json.loads((folder / "state.json").read_text())
    python_state, torch_state = _decode(state.pop("rng"))
    random.setstate(python_state)
    torch.set_rng_state(torch_state)
    return folder, state


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop metric rows logged after `step` (steps that will run again after a resume)."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _encode(value: Any) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def _decode(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))
