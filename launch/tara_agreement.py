"""Replays the recorded tool calls of the TARA training files through rlcore's tools.

    python -m launch.tara_agreement [--data-dir data/tara] [--limit N] [--workers N] [--show N]

Every call of a tool that runs here (calculator, Calendar.week_day /
day_difference / target_day, including multi_tools' target_day calls, and
code_run) is run again with the row as context, and the observation compared
with the recorded one under `rlcore.rewards.tara.observations_agree` (whitespace,
float formatting, code_run failure reasons as a set, Python-version wording of
errors). Prints agreements / calls per tool, then which disagreements come
from faults of the recording or differences of environment, how many recorded
observations contradict each other, and the first unexplained ones.

code_run runs each answer in the OS-isolated sandbox (`rlcore.rewards.tools.sandbox`), which
needs bubblewrap: without it the replay stops at once with the sandbox's message
rather than reporting every code_run call as a disagreement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rlcore.rewards.tara import agreement_report, measure_agreement, observations_agree, replay_recorded_calls
from rlcore.rewards.tools.sandbox import SandboxUnavailable, run_tests

__all__ = ["main", "measure_agreement"]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tara"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder of the TARA *_train.jsonl files")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each file (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="threads replaying calls (default: CPU count)")
    parser.add_argument("--show", type=int, default=5, help="unexplained disagreements to print per tool")
    args = parser.parse_args(argv)
    try:
        run_tests("", ["assert True"])
    except SandboxUnavailable as error:
        parser.exit(1, f"code_run cannot be replayed here: {error}\n")

    started = time.monotonic()
    replayed = replay_recorded_calls(args.data_dir, args.limit, workers=args.workers)
    report = agreement_report(replayed)
    rows = "all rows" if args.limit is None else f"first {args.limit} rows of each file"
    print(f"TARA tool agreement: {args.data_dir} ({rows}), {len(replayed)} calls "
          f"in {time.monotonic() - started:.1f} s")
    print(f"{'tool':<26}{'agree':>7} / {'calls':<6}{'%':>8}   identical up to whitespace")
    for tool, agreement in report.items():
        percent = 100 * agreement.agree / agreement.total
        print(f"{tool:<26}{agreement.agree:>7} / {agreement.total:<6}{percent:>8.2f}   {agreement.identical}")

    print("\nDisagreements explained by the recording or the environment:")
    explained = [(tool, reason, count) for tool, agreement in report.items()
                 for reason, count in agreement.explained.items()]
    for tool, reason, count in explained:
        print(f"  {tool}: {count} calls: {reason}")
    if not explained:
        print("  none")

    inconsistent = {tool: agreement.inconsistent_records for tool, agreement in report.items()
                    if agreement.inconsistent_records}
    print("\nRecorded observations that contradict each other (same tool, input and context): "
          + (", ".join(f"{tool} {count} calls" for tool, count in inconsistent.items()) or "none"))

    print("\nUnexplained disagreements:")
    for tool, agreement in report.items():
        if not agreement.unexplained:
            continue
        print(f"  {tool}: {len(agreement.unexplained)}")
        for item in agreement.unexplained[: args.show]:
            print(f"    {item.row.source} ({item.side}) input {item.call.action_input[:100]!r}\n"
                  f"      recorded: {item.call.observation[:300]}\n"
                  f"      replayed: {item.observed[:300]}")
    if not any(agreement.unexplained for agreement in report.values()):
        print("  none")
    print(f"\nComparison (rlcore.rewards.tara.observations_agree):\n{observations_agree.__doc__}")


if __name__ == "__main__":
    main()
