"""Tool-augmented (Themis) vs plain reward model on TARA rows: held-out pairwise accuracy.

    python -m launch.themis_eval [CONFIG.yaml] [key=value ...]      (= rlcore themis-eval)
    python -m launch.themis_eval launch/configs/rm_themis_calendar.yaml

The same tiny model (a tokenizer trained on the training rows' text, the same
initial weights) is trained three times on the same training split (seeded
shuffle, `heldout_fraction` held out), for the same number of epochs:

    tools                Themis: question + answer, then the tool trace and rationale; LM loss on the
                         model-written text + pairwise ranking loss; reward from the final token
    tools, no rationale  the paper's w/o-L_T ablation: the trace ends at the observation
    plain                question + answer only; pairwise ranking loss alone

Held-out accuracy of a tool model is measured the way it would be used: it writes its
Thought / Action / Action Input, the real tool (rlcore.rewards.tools) runs, the observation is
inserted, it writes its rationale, the value head scores the final token ("generated").
The accuracy on the recorded traces (teacher forcing) is reported as well; with a
rationale it is not a fair test, because a recorded rationale already says whether the
answer is right. Results go to <output_dir>/themis_eval.json; `variants=...` picks a
subset (comma-separated: tools,no_rationale,plain).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from rlcore.core.config import config_from_args
from rlcore.rewards.themis.training import ThemisConfig, train_themis

VARIANTS = {
    "tools": {"use_tools": True, "rationale": True},
    "no_rationale": {"use_tools": True, "rationale": False},
    "plain": {"use_tools": False},
}


def compare(config: ThemisConfig, variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(config.output_dir or f"runs/themis-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    runs = {name: train_themis(replace(config, **VARIANTS[name], output_dir=str(out / name))) for name in variants}
    first = next(iter(runs.values()))
    result = {
        "data": config.data,
        "train_pairs": first.train_pairs,
        "heldout_pairs": first.heldout_pairs,
        "steps": first.steps,
        "heldout_accuracy": {name: run.heldout_accuracy_generated for name, run in runs.items()},
        "heldout_accuracy_recorded_traces": {name: run.heldout_accuracy_recorded for name, run in runs.items()},
        "tool_calls_without_error": {name: run.heldout_tool_calls_valid for name, run in runs.items()},
        "seconds": {name: run.seconds for name, run in runs.items()},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "config": asdict(config),
        "runs": {name: asdict(run) for name, run in runs.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "themis_eval.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"held-out pairwise accuracy on {first.heldout_pairs} pairs of {config.data}:")
    for name, run in runs.items():
        tool_note = ("" if run.heldout_tool_calls_valid is None
                     else f"; calls without error {run.heldout_tool_calls_valid:.1%}")
        print(f"  {name:13s} generated trace + real tools: {_percent(run.heldout_accuracy_generated)}"
              f"   recorded trace (teacher-forced): {_percent(run.heldout_accuracy_recorded)}{tool_note}")
    print(f"results in {out / 'themis_eval.json'}")
    return result


def _percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1%}"


def cmd_themis_eval(args: list[str]) -> dict:
    """`rlcore themis-eval [CONFIG.yaml] [key=value ...]`, plus `variants=tools,no_rationale,plain` (default:
    all three)."""
    variants = [a.split("=", 1)[1] for a in args if a.startswith("variants=")]
    args = [a for a in args if not a.startswith("variants=")]
    chosen = tuple(variants[-1].split(",")) if variants else tuple(VARIANTS)
    return compare(config_from_args(ThemisConfig, args), chosen)


def main(argv: list[str] | None = None) -> int:
    cmd_themis_eval(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
