"""GPU check of the cluster path, on one GPU machine: PPO for 5 steps on a ~113M-parameter model built from a
config, with CUDA vLLM, the collective (NCCL) weight sync and a bf16 DeepSpeed learner.

    python -m launch.gpu_check [--steps 5] [--out runs/gpu_check]

What it asserts, after every weight sync (each step's batch is generated right after the previous step's
sync, and `rollout.recompute_logprobs=always` has the learner score the same tokens before it trains):
    the engine's log-probs of its samples equal the learner's within bf16 tolerance,
        mean |Δ| <= 0.05 nats per token and KL(engine || learner) <= 0.01 (k3 estimate);
    bf16 keeps 8 bits of mantissa, so a logit of ~10 carries ~0.04 of rounding, and vLLM's and HF's kernels
    sum in different orders: verl and OpenRLHF report mean |Δ| of ~0.01-0.03 for bf16 models. An engine
    that missed a sync instead differs by the whole update (logged as logprob_gap/abs, which is the same
    metric every PPO run logs).
What it prints: the weight-sync seconds per step (time/sync) and the rollout tokens/s.

It needs a CUDA GPU (exits with a message otherwise). CPU CI exercises the same protocol over gloo
(tests/test_weight_sync.py, tests/test_ppo.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from algorithms import ppo
from launch.bench_rollout import BIG_SPEC
from rlcore.core.config import load_config
from rlcore.core.tracking import read_metrics
from rlcore.models.tiny import build_tiny_model

MAX_MEAN_ABS_GAP = 0.05
MAX_KL_GAP = 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="runs/gpu_check", help="run folder (metrics.jsonl)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    model = str(build_tiny_model(BIG_SPEC))  # ~113M parameters, random init, the arithmetic tokenizer
    one_gpu = {"rollout.num_gpus": 0.4, "learner.num_gpus": 0.2, "critic.num_gpus": 0.2, "reference.num_gpus": 0.1}
    overrides = [
        f"model.path={model}", "model.dtype=bfloat16", "data.train=task:arithmetic",
        f"steps={args.steps}", "prompts_per_step=64", f"eval_every={args.steps}", "learner.lr=1e-5",
        "learner.bf16=true", "critic.bf16=true", "rollout.weight_sync=collective",
        "rollout.recompute_logprobs=always", "rollout.gpu_memory_utilization=0.3", "rollout.max_model_len=256",
        f"tracking.run_dir={args.out}", "tracking.wandb=false",
        *(f"{key}={value}" for key, value in one_gpu.items()),
    ]
    config = load_config(ppo.Config, "launch/configs/ppo_tiny.yaml", overrides, ignore=("algorithm",))
    result = ppo.train(config)
    steps = [row for row in read_metrics(result["run_dir"]) if "reward" in row]
    print(f"\n{'step':>4}{'sync s':>9}{'tokens/s':>10}{'mean |Δ logp|':>15}{'KL':>10}")
    for row in steps:
        print(f"{row['step']:>4}{row['time/sync']:>9.3f}{row['tokens_per_s']:>10.0f}"
              f"{row['logprob_gap/abs']:>15.4f}{row['logprob_gap/kl']:>10.5f}")
    print(f"median weight sync {statistics.median(r['time/sync'] for r in steps):.3f} s, "
          f"median rollout {statistics.median(r['tokens_per_s'] for r in steps):.0f} tokens/s")
    bad = [row["step"] for row in steps
           if row["logprob_gap/abs"] > MAX_MEAN_ABS_GAP or row["logprob_gap/kl"] > MAX_KL_GAP]
    if bad:
        print(f"FAIL: after the syncs before steps {bad} the engine's log-probs are not the learner's "
              f"(mean |Δ| > {MAX_MEAN_ABS_GAP} or KL > {MAX_KL_GAP})")
        return 1
    print(f"OK: after every sync the engine's log-probs equal the learner's within bf16 tolerance "
          f"(mean |Δ| <= {MAX_MEAN_ABS_GAP}, KL <= {MAX_KL_GAP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
