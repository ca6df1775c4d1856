"""The plumbing every algorithm's `train()` shares: the run folder, resuming, metrics, evaluation samples,
checkpoints and the exported model.

    run = Run(config, "rrhf", resume=config.resume)
    state = run.restore(policy=topology.learner)         # None on a fresh run; else the driver state saved
    ...
    run.log(metrics, step)                                # metrics.jsonl (+ wandb), with the phase times
    run.log_samples(samples, step)                        # samples.jsonl (+ a wandb table)
    run.checkpoint(step, last, state, policy=topology.learner)  # when due: actors save, HF export, commit
    model_path = run.finish(topology.learner)             # <run_dir>/final

Actor groups are saved into, and restored from, a sub-folder of the checkpoint named by their keyword
(`policy=learner` -> <checkpoint>/policy) with their actor class's `save` / `load`; the first group named
is the policy, which is also exported as a Hugging Face folder with `export`. See rlcore.core.checkpoint
for the folder layout and what makes a checkpoint complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlcore.core import checkpoint
from rlcore.core.config import to_dict
from rlcore.core.tracking import PhaseTimer, Tracker, new_run_dir
from rlcore.runtime.group import ActorGroup, gather


class Run:
    """One training run's folder, tracker and timer; `resume` names a run folder to continue."""

    def __init__(self, config: Any, algorithm: str, resume: str = "") -> None:
        tracking = config.tracking
        self.run_dir = Path(resume) if resume else new_run_dir(tracking.run_dir, tracking.run_name, algorithm)
        self.resuming = bool(resume)
        self.checkpoint_every = tracking.checkpoint_every
        self._tracking, self._config = tracking, to_dict(config)
        self.tracker: Tracker | None = None
        self.timer = PhaseTimer()
        self.start = time.time()

    def restore(self, **groups: ActorGroup) -> dict | None:
        """On a resumed run: load every group's part of the latest checkpoint, drop the metrics logged after it,
        and return the driver state `checkpoint` saved (RNG states restored); None on a fresh run."""
        state = None
        if self.resuming:
            folder, state = checkpoint.latest(self.run_dir)
            gather([ref for name, group in groups.items() for ref in group.map(group.actor_cls.load,
                                                                                str(folder / name))])
            checkpoint.truncate_metrics(self.run_dir, state["step"])
            print(f"resuming {self.run_dir} after step {state['step']}")
        self.tracker = Tracker(self.run_dir, self._config, self._tracking.wandb, self._tracking.wandb_mode,
                               self._tracking.project)
        return state

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One row of metrics.jsonl (and wandb) with the phase times since the last row."""
        if self.tracker is None:
            self.restore()
        self.tracker.log({**metrics, **self.timer.pop()}, step=step)

    def log_samples(self, samples: list[dict], step: int) -> None:
        """Evaluation generations (prompt, response, reward, ...) to samples.jsonl and a wandb table."""
        if not samples:
            return
        with (self.run_dir / "samples.jsonl").open("a") as out:
            for sample in samples:
                out.write(json.dumps({"step": step, **sample}, default=str) + "\n")
        if self.tracker is not None:
            self.tracker.table("samples", samples, step)

    def due(self, step: int, last: int) -> bool:
        every = self.checkpoint_every
        return bool(every and step % every == 0) or step == last

    def checkpoint(self, step: int, last: int, state: dict[str, Any], **groups: ActorGroup) -> None:
        """When due (every `tracking.checkpoint_every` steps and at the last): every group saves its part, the
        policy (the first group) is exported as a Hugging Face folder, then the driver `state` is committed."""
        if not self.due(step, last):
            return
        with self.timer.phase("checkpoint"):
            folder = checkpoint.checkpoint_dir(self.run_dir, step)
            gather([ref for name, group in groups.items() for ref in group.map(group.actor_cls.save,
                                                                                str(folder / name))])
            self.export(next(iter(groups.values())), step)
            checkpoint.commit(self.run_dir, step, state)

    def export(self, learner: ActorGroup, step: int | None = None) -> str:
        """The learner's policy as a Hugging Face folder: <run_dir>/final, or checkpoint `step`'s `hf` folder.
        Every rank takes part (ZeRO-3 gathers); returns the folder."""
        return gather(learner.map(learner.actor_cls.export, str(checkpoint.model_dir(self.run_dir, step))))[0]

    def finish(self, learner: ActorGroup, metrics: dict[str, Any] | None = None, step: int = 0) -> str:
        """Export the final policy, log the last `metrics` at `step`, close the tracker; returns the model folder."""
        model_path = self.export(learner)
        if metrics:
            self.log(metrics, step)
        self.close()
        return model_path

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    @property
    def seconds(self) -> float:
        return round(time.time() - self.start, 1)
