"""`rlcore bench` end to end, shortened: PPO, RRHF and self-rewarding, one seed, two steps (iterations) of 8 prompts.

Checks the report's fields against what the topologies are: PPO holds four model copies (rollout engine, policy
learner, critic, reference; the rule reward none) and RRHF two (rollout engine, learner); every role was busy,
measured inside its actors; self-rewarding holds two (rollout engine, learner); the critic's seconds (spent in its inner LearnerWorker) are counted; both start
from the same checkpoint on the same held-out prompts; the table, the JSON and both plots are written.
"""

import json

import pytest

from launch import cli

ROLES = {"ppo": {"rollout", "reward", "reference", "critic", "learner"}, "rrhf": {"rollout", "reward", "learner"},
         "self_rewarding": {"rollout", "learner"}}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("bench")
    code = cli.main(["bench", "launch/configs/bench_tiny.yaml", "algorithms=[ppo,rrhf,self_rewarding]", "seeds=[0]",
                     "prompts=16", "prompts_per_step=8", "iterations=2", "eval_every_prompts=8", "eval_size=32",
                     "overrides={self_rewarding: [judge_eval_prompts=16]}", f"run_dir={report_dir}"])
    assert code == 0
    return report_dir


def test_report_has_cost_and_accuracy_of_every_algorithm(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert report["failures"] == []
    assert [(r["algorithm"], r["seed"]) for r in report["runs"]] == [("ppo", 0), ("rrhf", 0), ("self_rewarding", 0)]
    for run in report["runs"]:
        assert set(run["roles"]) == ROLES[run["algorithm"]], run["roles"].keys()
        for role, usage in run["roles"].items():
            assert usage["busy_s"] >= 0 and usage["peak_rss_mb"] > 50 and usage["replicas"] == 1, (role, usage)
            if role != "reward":  # the rule reward's scoring is quick enough to round to ~0
                assert usage["busy_s"] > 0 and usage["calls"] > 0, (role, usage)
        assert run["actor_s"] == pytest.approx(sum(u["busy_s"] for u in run["roles"].values()))
        assert run["actor_cpu_s"] == pytest.approx(sum(u["busy_cpu_s"] for u in run["roles"].values()))
        assert 0 < run["actor_cpu_s"]
        assert 0 < run["actor_s"] < 3 * len(run["roles"]) * run["wall_s"]
        assert run["tokens_generated"] > 0 and run["tokens_trained"] > 0
        assert run["models_held"] == {"ppo": 4, "rrhf": 2, "self_rewarding": 2}[run["algorithm"]]
        assert [point["step"] for point in run["curve"]] == [0, 1, 2] and run["evaluations"] == 3
        xs = [point["actor_s"] for point in run["curve"]]
        assert xs == sorted(xs) and xs[0] > 0  # cumulative, and the first evaluation already cost something
        assert run["first_eval_actor_s"] == xs[0] and run["first_eval_tokens"] > 0
        assert run["curve"][0]["accuracy"] == run["accuracy_before"]
        assert run["curve"][-1]["accuracy"] == run["accuracy_after"]
    ppo, rrhf, _ = report["runs"]
    assert ppo["roles"]["critic"]["busy_s"] > 0  # CriticWorker's calls run in its LearnerWorker, counted there
    assert ppo["accuracy_before"] == pytest.approx(rrhf["accuracy_before"], abs=1 / 32)  # same start, same prompts
    assert set(report["summary"]) == {"ppo", "rrhf", "self_rewarding"}
    assert report["summary"]["ppo"]["actor_s"]["n"] == 1 and report["summary"]["ppo"]["actor_s"]["std"] == 0


def test_report_writes_table_and_plots(report_dir):
    table = (report_dir / "report.md").read_text()
    for text in ("| ppo | 1 |", "| rrhf | 1 |", "| self_rewarding | 1 |", "critic actor-s", "models held", "tokens trained", "peak RSS MB"):
        assert text in table, text
    for name in ("accuracy_vs_actor_seconds.png", "actor_seconds_by_role.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (report_dir / "runs" / "ppo-seed0" / "metrics.jsonl").exists()
