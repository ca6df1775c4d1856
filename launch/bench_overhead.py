"""python -m launch.bench_overhead: what rlcore's actors cost on top of the model.

For each model size it runs, in one process, the same PPO step (same model, prompts, batch, minibatches, seeds,
losses from rlcore.core.losses) two ways:

    plain    one process: the rollout engine in-process (the same RolloutWorker, vLLM), the policy, critic and
             reference as plain PyTorch modules, torch.optim.AdamW; no Ray, no DeepSpeed
    actors   algorithms.ppo.train: Ray actors, the learner and critic as rlcore LearnerWorkers

with the critic (advantage=gae) and critic-free (advantage=grpo), and, when `trl` is installed
(`pip install -e .[bench]`), TRL's GRPOTrainer on the same model and prompts. It reports samples/s (the median
step after `--warmup` steps), the actors/plain ratio and the per-phase seconds side by side, as a Markdown table
(and JSON with --out).

Sizes: `tiny` is the SFT warm start of `make run` (~1M parameters); `medium` a ~34M-parameter TinyModelSpec
(random weights: every response runs to max_new_tokens, which only makes the step heavier).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

SIZES = {"tiny": "sft:arithmetic", "medium": "medium"}
PHASES = ("generate", "score", "update", "sync")
"""score: rewards, reference log-probs and values (one after another in the plain loop, at once through the actors)."""


def model_path(size: str) -> str:
    """The model a size stands for, built (or found in the cache)."""
    from rlcore.models.build import build_models
    from rlcore.models.tiny import TinyModelSpec, build_tiny_model

    if size == "medium":
        spec = TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048)
        return str(build_tiny_model(spec))
    build_models(SIZES[size])
    return SIZES[size]


def ppo_config(model: str, advantage: str, steps: int, prompts: int, run_dir: str, threads: int | None = None):
    """ppo_tiny.yaml on `model` with `advantage`, no evaluation in between and no checkpoints."""
    from algorithms.ppo import Config
    from rlcore.core.config import load_config

    overrides = [f"model.path={model}", f"advantage={advantage}", f"steps={steps}", f"prompts_per_step={prompts}",
                 f"eval_every={steps}", f"tracking.run_dir={run_dir}", "tracking.checkpoint_every=0",
                 "tracking.wandb=false"]
    if threads is not None:
        overrides += [f"{role}.threads={threads}" for role in ("rollout", "reward", "reference", "critic", "learner")]
    return load_config(Config, Path(__file__).parent / "configs" / "ppo_tiny.yaml", overrides, ignore=("algorithm",))


def plain_ppo(config) -> list[dict[str, float]]:
    """The PPO step of algorithms.ppo in one process; per step, the seconds of each phase."""
    from actors.driver import load_train_eval
    from actors.rollout import RolloutWorker, Sampling
    from algorithms.ppo import estimate_advantages, policy_objective, value_objective
    from rlcore.core.weights import WeightUpdate
    from rlcore.data.sources import RowStream
    from rlcore.models.loading import load_model, resolve_model, response_logprobs, response_values

    torch.manual_seed(config.seed)
    train_data, _ = load_train_eval(config.data, config.model.path, config.steps * config.prompts_per_step)
    prompts_of = RowStream(train_data.rows, config.data.seed, config.data.shuffle)
    engine = RolloutWorker(config.model.path, config.rollout)
    policy = load_model(resolve_model(config.model.path))
    reference = load_model(resolve_model(config.model.path)).eval().requires_grad_(False)
    critic = load_model(resolve_model(config.model.path), head="value") if config.uses_critic else None
    opt_policy = torch.optim.AdamW(policy.parameters(), lr=config.learner.lr, betas=tuple(config.learner.betas))
    opt_critic = (torch.optim.AdamW(critic.parameters(), lr=config.critic.lr, betas=tuple(config.critic.betas))
                  if critic is not None else None)
    task = train_data.task
    steps = []
    try:
        for step in range(1, config.steps + 1):
            times: dict[str, float] = {}
            clock = time.perf_counter()

            def lap(phase: str) -> None:
                nonlocal clock
                now = time.perf_counter()
                times[phase], clock = now - clock, now

            rows = prompts_of.take(step, config.prompts_per_step)
            step_seed = config.seed * 1_000_003 + step
            sampling = replace(Sampling.from_config(config.rollout), seed=step_seed)
            batch = engine.generate([r["prompt"] for r in rows], sampling)
            lap("generate")
            scores = torch.tensor([float(task.verify(p, r)) for p, r in zip(batch.info["prompt"],
                                                                              batch.info["response"])])
            with torch.no_grad():
                batch.ref_logprobs = response_logprobs(reference, batch)
                if critic is not None:
                    batch.values = response_values(critic, batch)
            lap("score")
            batch.rewards = scores
            estimate_advantages(batch, config, config.kl_coef)
            generator = torch.Generator().manual_seed(step_seed)
            for _ in range(config.ppo_epochs):
                for minibatch in batch.minibatches(-(-len(batch) // config.minibatches), generator):
                    _optimize(policy, opt_policy, policy_objective(policy, minibatch, config.clip_eps,
                                                                   config.entropy_coef)[0], config.learner)
                    if critic is not None:
                        _optimize(critic, opt_critic, value_objective(critic, minibatch, config.value_clip_eps)[0],
                                  config.critic)
            lap("update")
            tensors = {k: v.detach() for k, v in policy.state_dict().items()}
            engine.update_weights(WeightUpdate(tensors=tensors, version=step))
            lap("sync")
            steps.append(times | {"samples": len(batch)})
    finally:
        engine.shutdown()
    return steps


def _optimize(model, optimizer, loss, config) -> None:
    loss.backward()
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def actors_ppo(config) -> list[dict[str, float]]:
    """algorithms.ppo.train on `config`; per step, the seconds of each phase from its metrics."""
    from algorithms.ppo import train
    from rlcore.core.tracking import read_metrics

    result = train(config)
    rows = read_metrics(result["run_dir"])
    samples = config.prompts_per_step * config.rollout.n_samples
    return [{phase: row.get(f"time/{phase}", 0.0) for phase in PHASES} | {"samples": samples}
            for row in rows if row.get("step", 0) >= 1 and "time/generate" in row]


def trl_grpo(model: str, config) -> list[dict[str, float]] | None:
    """TRL GRPOTrainer on the same model, prompts and batch (None when trl is not installed)."""
    try:
        import trl
    except ImportError:
        return None
    from datasets import Dataset
    from transformers import TrainerCallback

    from actors.driver import load_train_eval
    from rlcore.models.loading import load_model, load_tokenizer, resolve_model

    train_data, _ = load_train_eval(config.data, config.model.path, config.steps * config.prompts_per_step)
    task = train_data.task
    prompts = [row["prompt"] for row in train_data.rows]

    def reward(completions, prompts, **_):
        return [float(task.verify(p, c)) for p, c in zip(prompts, completions)]

    samples = config.prompts_per_step * config.rollout.n_samples
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **_):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **_):
            step_times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(
            output_dir=out, per_device_train_batch_size=samples // config.minibatches,
            gradient_accumulation_steps=1, num_generations=config.rollout.n_samples,
            max_completion_length=config.rollout.max_new_tokens, learning_rate=config.learner.lr,
            beta=config.kl_coef, max_steps=config.steps, logging_steps=10**6, save_strategy="no", report_to=[],
            use_cpu=True, bf16=False, seed=config.seed, steps_per_generation=config.minibatches)
        trainer = trl.GRPOTrainer(
            model=load_model(resolve_model(model)), reward_funcs=reward, args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=load_tokenizer(model),
            callbacks=[Timer()])
        trainer.train()
    # one optimizer step per minibatch; generation happens every `minibatches` steps
    per_step = [sum(step_times[i:i + config.minibatches]) for i in range(0, len(step_times), config.minibatches)]
    return [{"all": s, "samples": samples} for s in per_step]


def summarize(steps: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Median seconds per phase and samples/s over the steps after `warmup`."""
    kept = steps[warmup:] or steps
    summary = {phase: statistics.median(s.get(phase, 0.0) for s in kept) for phase in PHASES}
    summary["all"] = statistics.median(s.get("all", sum(s.get(p, 0.0) for p in PHASES)) for s in kept)
    summary["samples_per_s"] = kept[0]["samples"] / summary["all"]
    return summary


def run(sizes: list[str], steps: int, prompts: int, warmup: int, threads: int | None) -> dict:
    from rlcore.runtime.cluster import init_ray

    report: dict = {"steps": steps, "prompts_per_step": prompts, "warmup": warmup, "sizes": {}}
    with tempfile.TemporaryDirectory() as runs:
        for size in sizes:
            model = model_path(size)
            rows: dict[str, dict] = {}
            for advantage in ("gae", "grpo"):
                config = ppo_config(model, advantage, steps, prompts, runs, threads)
                rows[f"plain {advantage}"] = summarize(plain_ppo(config), warmup)
                init_ray()
                rows[f"actors {advantage}"] = summarize(actors_ppo(config), warmup)
                import ray

                ray.shutdown()
            trl_steps = trl_grpo(model, ppo_config(model, "grpo", steps, prompts, runs))
            if trl_steps is not None:
                rows["trl grpo"] = summarize(trl_steps, warmup)
            report["sizes"][size] = {"model": model, "rows": rows}
            print(markdown({**report, "sizes": {size: report["sizes"][size]}}), flush=True)
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['prompts_per_step']} prompts x 4 samples per step, median of steps "
             f"{report['warmup'] + 1}..{report['steps']}", "",
             "| size | run | samples/s | x plain | " + " | ".join(PHASES) + " | step s |",
             "|---" * (len(PHASES) + 5) + "|"]
    for size, entry in report["sizes"].items():
        rows = entry["rows"]
        for name, row in rows.items():
            plain = rows.get(f"plain {name.split()[1]}", rows.get("plain grpo"))
            ratio = row["samples_per_s"] / plain["samples_per_s"]
            phases = " | ".join(f"{row[p]:.3f}" if "generate" in row and row[p] else "" for p in PHASES)
            lines.append(f"| {size} | {name} | {row['samples_per_s']:.0f} | {ratio:.2f} | {phases} | "
                         f"{row['all']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m launch.bench_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,medium", help="comma-separated: tiny, medium (default both)")
    parser.add_argument("--steps", type=int, default=8, help="PPO steps per run (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians (default 2)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step, 4 samples each (default 64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads of every role (default: each role's config)")
    parser.add_argument("--out", default="", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for size in sizes:
        if size not in SIZES:
            parser.error(f"--sizes: unknown size {size!r}; choose from {list(SIZES)}")
    report = run(sizes, args.steps, args.prompts, args.warmup, args.threads)
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
