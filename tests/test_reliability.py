"""Long runs die: resume from checkpoints, survive dead workers, reject bad input clearly.

These runs check mechanics, not learning: few prompts and steps from the SFT
warm start (so rewards are not all zero).
"""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import ray
import torch

from actors.reward import RewardWorker, Scores
from actors.rollout import RolloutWorker, Sampling
from algorithms import algorithm_module, ppo
from rlcore.core.batch import make_batch
from rlcore.core.config import RewardConfig, RolloutConfig, load_config
from rlcore.core.tracking import read_metrics
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import with_retries

SMALL = ["prompts_per_step=8", "data.eval_size=8", "eval_every=100",
         "tracking.wandb=false", "tracking.checkpoint_every=2", "rollout.max_new_tokens=4"]


@pytest.fixture(scope="module")
def ray_local():
    init_ray()
    yield
    ray.shutdown()


def ppo_config(*overrides):
    return load_config(ppo.Config, "launch/configs/ppo_tiny.yaml", [*SMALL, *overrides], ignore=("algorithm",))


def step_rows(run_dir):
    """Metric rows by step, training steps only (the rows that carry a step's own metrics), plus step 0."""
    return {r["step"]: r for r in read_metrics(run_dir) if r["step"] == 0 or "reward" in r or "pairs" in r}


# The driver is killed after its first checkpoint (of three: it must not finish first) and resumed; the rows
# of the steps after it must repeat a straight run's: keys compared exactly (counts, rewards of seeded
# samples) and to float tolerance (losses).
RESUMED = {
    "ppo": ("launch/configs/ppo_tiny.yaml", SMALL + ["steps=6"], ["reward", "response_length"],
            ["kl", "policy/loss", "critic/loss"]),
    "rrhf": ("launch/configs/rrhf_tiny.yaml",
             ["rounds=6", "prompts_per_round=8", "queries_per_update=8", "data.eval_size=8", "eval_every=100",
              "tracking.wandb=false", "tracking.checkpoint_every=2", "rollout.max_new_tokens=4"],
             ["reward", "queries", "updates"], ["loss", "rank_accuracy"]),
    "self_rewarding": ("launch/configs/self_rewarding_arithmetic_tiny.yaml",
                       ["iterations=2", "new_prompts=32", "judge_eval_prompts=16",
                        "data.eval_size=16", "pairs_per_step=8", "tracking.wandb=false",
                        "tracking.checkpoint_every=1"],
                       ["prompts_kept", "pairs", "heldout_accuracy", "chosen_right"], ["dpo/loss"]),
}


@pytest.mark.parametrize("algorithm", sorted(RESUMED))
def test_killed_driver_resumes_with_the_same_metrics(algorithm, ray_local, tmp_path):
    """A straight run == a driver killed after its first checkpoint, resumed with `resume=RUN_DIR`.

    Each step's samples and minibatches are seeded by (seed, step), and DeepSpeed
    restores weights, optimizer and schedule exactly, so the resumed steps repeat
    the straight run's rewards exactly and its losses to float tolerance (1e-4).
    """
    config_file, overrides, exact, close = RESUMED[algorithm]
    module = algorithm_module(algorithm)

    def config(*more):
        return load_config(module.Config, config_file, [*overrides, *more], ignore=("algorithm",))

    straight = module.train(config(f"tracking.run_dir={tmp_path}", "tracking.run_name=straight"))
    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "launch.cli", "train", config_file, *overrides,
               f"tracking.run_dir={tmp_path}", "tracking.run_name=killed"]
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not (killed_dir / "checkpoints" / "latest").exists():
            assert driver.poll() is None, "the driver ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)  # a small step takes ~0.2 s: a slow poll saw only the last checkpoint (CI, 4 < 4)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    checkpointed = int((killed_dir / "checkpoints" / "latest").read_text().removeprefix("step_"))
    last = max(step_rows(straight["run_dir"]))
    assert checkpointed < last, "the driver was killed after its last step: nothing to resume"

    module.train(config(f"resume={killed_dir}"))
    a, b = step_rows(straight["run_dir"]), step_rows(killed_dir)
    assert sorted(b) == sorted(a)
    for step in [0, *range(checkpointed + 1, last + 1)]:  # the first evaluation is kept, the rest repeated
        for key in (k for k in exact if step or k in a[0]):
            assert b[step][key] == a[step][key], (step, key, a[step][key], b[step][key])
        for key in (k for k in close if step):
            assert abs(b[step][key] - a[step][key]) < 1e-4, (step, key, a[step][key], b[step][key])
    assert (killed_dir / "final" / "model.safetensors").exists()


def actor_pid(class_name: str) -> int:
    """The process of this test's (only) actor of `class_name`: a descendant of this process, since the local
    Ray started here spawned it (other Ray clusters on the machine have actors of the same name)."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(f"ray::{class_name}"):
                pids.append(process.pid)
        except psutil.Error:  # exited meanwhile
            pass
    [pid] = pids
    return pid


def test_run_survives_killed_rollout_and_reference_workers(ray_local, tmp_path):
    """SIGKILL the rollout worker's and the reference's processes mid-run: Ray restarts them, the step is
    retried (weights re-sent to the new rollout engine) and every step completes."""
    config = ppo_config("steps=5", f"tracking.run_dir={tmp_path}", "tracking.run_name=kill", "tracking.checkpoint_every=0")
    killed = []

    def kill_workers():
        metrics = tmp_path / "kill" / "metrics.jsonl"
        while not (metrics.exists() and '"step": 2' in metrics.read_text()):
            time.sleep(0.2)
        for name in ("RolloutWorker", "ReferenceWorker"):
            os.kill(actor_pid(name), signal.SIGKILL)
            killed.append(name)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    result = ppo.train(config)
    killer.join(timeout=5)
    assert killed == ["RolloutWorker", "ReferenceWorker"]
    assert sorted(step_rows(result["run_dir"])) == [0, 1, 2, 3, 4, 5]


def test_reward_worker_rejects_wrong_counts_and_nan():
    """A scorer that returns the wrong number of rewards, or NaN, is a clear error, not a silent wrong result."""
    worker = RewardWorker(RewardConfig(), "arithmetic")
    batch = make_batch([[1, 5], [1, 6]], [[7], [8]], pad_token_id=0,
                       info={"prompt": ["1+1=", "2+2="], "response": ["2", "5"]})
    assert worker.score(batch).rewards.tolist() == [1.0, 0.0]
    worker.scorer = lambda prompts, responses, answers: Scores(torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match=r"returned \(1,\) rewards for a batch of 2"):
        worker.score(batch)
    worker.scorer = lambda prompts, responses, answers: Scores(torch.tensor([1.0, float("nan")]))
    with pytest.raises(RuntimeError, match=r"non-finite rewards for samples \[1\]"):
        worker.score(batch)


def test_with_retries_waits_for_restarts_and_bounds_deaths():
    """Unavailable (restarting) actors are waited for and the caller resyncs them; deaths are counted and bounded."""
    events = []

    def restarting_then_fine():
        events.append("call")
        if events.count("call") == 1:
            raise ray.exceptions.ActorUnavailableError("restarting", None)
        return 42

    assert with_retries(restarting_then_fine, 0, "step", lambda: events.append("resync")) == 42
    assert events == ["call", "resync", "call"]

    def always_dead():
        raise ray.exceptions.RayActorError()

    with pytest.raises(RuntimeError, match="step: actors died 3 times; giving up after 2 retries"):
        with_retries(always_dead, 2, "step")


def test_over_length_prompts_are_skipped_and_all_too_long_is_an_error():
    """A prompt that cannot fit with max_new_tokens in the model's context is dropped (its group is missing)."""
    worker = RolloutWorker("tiny:arithmetic", RolloutConfig(engine="transformers", threads=1))
    long_prompt = "1+" * 200 + "1="  # ~400 tokens; the tiny model's context is 256
    batch = worker.generate(["1+1=", long_prompt, "2+2="], Sampling(n=2, max_new_tokens=4), group_ids=[7, 8, 9])
    assert batch.group.tolist() == [7, 7, 9, 9]
    with pytest.raises(ValueError, match="all 1 prompts are longer than 252 tokens"):
        worker.generate([long_prompt], Sampling(max_new_tokens=4))
