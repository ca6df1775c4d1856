"""Tool-augmented (Themis) vs plain reward model on TARA rows: held-out pairwise accuracy.

    python -m launch.themis_eval [CONFIG.yaml] [key=value ...]      (= rlcore themis-eval)
    python -m launch.themis_eval launch/configs/rm_themis_calendar.yaml

The same tiny model (a tokenizer trained on the training rows' text, the same
initial weights) is trained twice on the same training split (seeded shuffle,
`heldout_fraction` held out), for the same number of steps:

    tools   Themis: question + answer, then the tool trace and rationale; LM loss on the
            model-written text + pairwise ranking loss; reward from the final token
    plain   question + answer only; pairwise ranking loss alone

Held-out accuracy of the tool model is measured the way it would be used: it writes its
Thought / Action / Action Input, the real tool (rlcore.tools) runs, the observation is
inserted, it writes its rationale, the value head scores the final token ("generated").
The accuracy on the recorded traces (teacher forcing) is reported as well; it is not a
fair test, because a recorded rationale already says whether the answer is right.
Results go to <output_dir>/themis_eval.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from rlcore.themis import ThemisConfig, train_themis


def compare(config: ThemisConfig) -> dict:
    out = Path(config.output_dir or f"runs/themis-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    tools = train_themis(replace(config, use_tools=True, output_dir=str(out / "tools")))
    plain = train_themis(replace(config, use_tools=False, output_dir=str(out / "plain")))
    result = {
        "data": config.data,
        "train_pairs": tools.train_pairs,
        "heldout_pairs": tools.heldout_pairs,
        "steps": tools.steps,
        "themis_heldout_accuracy_generated": tools.heldout_accuracy_generated,
        "themis_heldout_accuracy_recorded_traces": tools.heldout_accuracy_recorded,
        "themis_tool_calls_without_error": tools.heldout_tool_calls_valid,
        "plain_rm_heldout_accuracy": plain.heldout_accuracy_recorded,
        "seconds": {"tools": tools.seconds, "plain": plain.seconds},
        "load_average": _load_average(),
        "config": asdict(config),
        "runs": {"tools": asdict(tools), "plain": asdict(plain)},
    }
    (out / "themis_eval.json").write_text(json.dumps(result, indent=2, default=str))
    generated = tools.heldout_accuracy_generated
    print(f"held-out pairwise accuracy on {tools.heldout_pairs} pairs of {config.data}:\n"
          f"  Themis, generated trace + real tools : {'n/a' if generated is None else f'{generated:.1%}'}"
          f" (calls without error: {tools.heldout_tool_calls_valid})\n"
          f"  Themis, recorded trace (teacher-forced): {tools.heldout_accuracy_recorded:.1%}\n"
          f"  plain RM (question + answer)           : {plain.heldout_accuracy_recorded:.1%}\n"
          f"results in {out / 'themis_eval.json'}")
    return result


def _load_average() -> list[float]:
    """1, 5 and 15-minute load averages when the run ended (the machine may be shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    from launch.reward_cmds import cmd_themis_eval

    cmd_themis_eval(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
