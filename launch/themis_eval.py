"""Tool-augmented (Themis) vs plain reward model on TARA rows: held-out pairwise accuracy, per question type.

    python -m launch.themis_eval [CONFIG.yaml] [key=value ...] [variants=tools,plain] [seeds=0,1]
    rlcore themis-eval launch/configs/rm_themis_calendar.yaml seeds=0,1
    rlcore themis-eval launch/configs/rm_themis_calculator.yaml seeds=0,1

The same tiny model (a tokenizer trained on the training rows' text, the same
initial weights) is trained on the same training split (seeded shuffle,
`heldout_fraction` held out) plus the same `generated_pairs`, for the same number
of epochs, once per variant and seed:

    tools                Themis: question + answer, then the tool trace and rationale; LM loss on the
                         model-written text + pairwise ranking loss; reward from the final token
    no_rationale         the paper's w/o-L_T ablation: the trace ends at the observation
    plain                question + answer only; pairwise ranking loss alone

Held-out accuracy of a tool model is measured the way it would be used: it writes its
Thought / Action / Action Input, the real tool (rlcore.rewards.tools) runs, the observation is
inserted, it writes its rationale, the value head scores the final token. Whether its calls
were right is counted against the recorded call of the same answer: "call inputs right" (the
same tool and arguments) and "observations right" (the observation the right call gives).
The accuracy on the recorded traces (teacher forcing) is reported as well; with a rationale
it is not a fair test, because a recorded rationale already says whether the answer is right.
The table shows the mean over seeds with each seed's value; everything goes to
<output_dir>/themis_eval.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from rlcore.core.config import ConfigError, config_from_args
from rlcore.rewards.themis.training import ThemisConfig, ThemisResult, train_themis

VARIANTS = {
    "tools": {"use_tools": True, "rationale": True},
    "no_rationale": {"use_tools": True, "rationale": False},
    "plain": {"use_tools": False},
}


def compare(config: ThemisConfig, variants: tuple[str, ...] = tuple(VARIANTS), seeds: tuple[int, ...] = (0,)) -> dict:
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(config.output_dir or f"runs/themis-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    runs = {name: [train_themis(replace(config, **VARIANTS[name], seed=seed,
                                        output_dir=str(out / (name if len(seeds) == 1 else f"{name}-seed{seed}"))))
                   for seed in seeds] for name in variants}
    first = next(iter(runs.values()))[0]
    result = {
        "data": config.data,
        "seeds": list(seeds),
        "train_pairs": first.train_pairs,
        "heldout_pairs": first.heldout_pairs,
        "steps": first.steps,
        "variants": {name: summary(results) for name, results in runs.items()},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "config": asdict(config),
        "runs": {name: [asdict(run) for run in results] for name, results in runs.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "themis_eval.json").write_text(json.dumps(result, indent=2, default=str))
    print(report(result))
    print(f"results in {out / 'themis_eval.json'}")
    return result


def summary(results: list[ThemisResult]) -> dict:
    """Per-seed values and their mean of what `report` prints."""
    def collect(values: list) -> dict:
        present = [v for v in values if v is not None]
        return {"values": values, "mean": sum(present) / len(present) if present else None}

    types = sorted({kind for run in results for kind in run.heldout_accuracy_by_type})
    return {
        "accuracy": collect([run.heldout_accuracy_generated for run in results]),
        "by_type": {kind: collect([run.heldout_accuracy_by_type.get(kind) for run in results]) for kind in types},
        "recorded_traces": collect([run.heldout_accuracy_recorded for run in results]),
        "call_inputs_right": collect([run.heldout_call_inputs_right for run in results]),
        "observations_right": collect([run.heldout_observations_right for run in results]),
        "seconds": collect([run.seconds for run in results]),
    }


def report(result: dict) -> str:
    """The comparison as a table: mean over seeds, with each seed's value in brackets."""
    def cell(entry: dict, percent: bool = True) -> str:
        if entry["mean"] is None:
            return "n/a"
        shown = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.0f}")
        seeds = "/".join(shown(v) for v in entry["values"]) if len(entry["values"]) > 1 else ""
        return shown(entry["mean"]) + (f" ({seeds})" if seeds else "")

    variants = result["variants"]
    types = sorted({kind for entry in variants.values() for kind in entry["by_type"]})
    header = ["variant", "held-out accuracy", *types, "call inputs right", "observations right",
              "recorded traces", "seconds"]
    rows = [[name, cell(entry["accuracy"]), *(cell(entry["by_type"][t]) if t in entry["by_type"] else "n/a"
                                             for t in types),
             cell(entry["call_inputs_right"]), cell(entry["observations_right"]), cell(entry["recorded_traces"]),
             cell(entry["seconds"], percent=False)] for name, entry in variants.items()]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"held-out pairwise accuracy on {result['heldout_pairs']} pairs of {result['data']} "
             f"(tool models: their own calls, real tools), mean over seeds {result['seeds']}:"]
    lines += ["  " + "  ".join(str(value).ljust(width) for value, width in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines)


def cmd_themis_eval(args: list[str]) -> dict:
    """`rlcore themis-eval [CONFIG.yaml] [key=value ...]`, plus `variants=tools,no_rationale,plain` (default:
    all three) and `seeds=0,1` (default: the config's seed)."""
    picked = {key: [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")] for key in ("variants", "seeds")}
    args = [a for a in args if not a.startswith(("variants=", "seeds="))]
    config = config_from_args(ThemisConfig, args)
    chosen = tuple(picked["variants"][-1].split(",")) if picked["variants"] else tuple(VARIANTS)
    try:
        seeds = tuple(int(s) for s in picked["seeds"][-1].split(",")) if picked["seeds"] else (config.seed,)
    except ValueError:
        raise ConfigError(f"seeds={picked['seeds'][-1]!r}: expected comma-separated whole numbers, e.g. seeds=0,1")
    return compare(config, chosen, seeds)


def main(argv: list[str] | None = None) -> int:
    cmd_themis_eval(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
