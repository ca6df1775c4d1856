"""Rollout benchmark: generation throughput and weight-sync cost.

    python -m launch.bench_rollout --out runs/bench_rollout.json

Three measurements, each the median of `--reps` timed repetitions after one warm-up:

1. Ray overhead: tokens/s of `RolloutWorker.generate` through a Ray actor vs the
   same vLLM engine called in-process, on the same seeded prompts (goal >= 0.95).
2. Engines: vLLM(-CPU) vs transformers `generate` on the same batch (tokens/s ratio).
3. Weight sync: a DeepSpeed learner's weights pushed to every rollout worker
   by `actors.driver.WeightSync`, the call the algorithms make after each update,
   over each transport (`rollout.weight_sync`):
     collective    learner rank 0 and the engines' workers in one group (gloo here,
                   NCCL on GPU), streamed tensor by tensor (goal <= 1.0x the round trip);
     object_store  rank 0's state dict `ray.put` once, loaded by every worker, as
                   numpy arrays mapped from shared memory (WeightUpdate.__reduce__;
                   goal <= 1.5x);
   against a plain object-store round trip of the same state dict in the driver
   (`ray.put` + `ray.get` of a dict of torch tensors), for the tiny model and a
   ~113M-parameter Qwen2 (hidden 768, 12 layers, random init). A second baseline,
   `put + actor receive`, ships the state dict to an actor that only touches it.

Engines are timed one call at a time, in turn within each repetition (a 2-core machine
cannot time two at once, and turns spread load from other processes evenly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import ray
import torch

from actors.driver import WeightSync
from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core.config import LearnerConfig, ModelConfig, RolloutConfig
from rlcore.data.tasks import get_task
from rlcore.models.loading import resolve_model
from rlcore.models.tiny import TinyModelSpec, build_tiny_model
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather

BIG_SPEC = TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_positions=512)
"""~113M parameters with the tiny byte-level tokenizer (vocab 320)."""


class Sink:
    """An actor that receives a state dict and only touches it: the object-store transport alone."""

    def receive(self, state: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in state.values())


def timed(fn, reps: int) -> tuple[float, object]:
    """Median seconds of `reps` calls after one warm-up call, and the last result."""
    result = fn()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def bench_generation(model: str, args) -> dict:
    """Three engines alive at once, called in turn each repetition, so load drift hits all alike."""
    prompts = [example.prompt for example in get_task("arithmetic").examples("train", args.prompts)]
    sampling = Sampling(n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
    config = RolloutConfig(kv_cache_gib=args.kv_cache_gib, threads=args.threads)
    in_process = RolloutWorker(model, config)
    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(model, config)
    transformers = RolloutWorker(model, RolloutConfig(engine="transformers", threads=args.threads))
    paths = {
        "vllm_in_process": lambda: in_process.generate(prompts, sampling),
        "vllm_ray_actor": lambda: ray.get(actor.generate.remote(prompts, sampling)),
        "transformers_in_process": lambda: transformers.generate(prompts, sampling),
    }
    seconds = {name: [] for name in paths}
    tokens = {name: int(generate().response_mask.sum()) for name, generate in paths.items()}  # warm-up
    for _ in range(args.reps):
        for name, generate in paths.items():
            start = time.perf_counter()
            generate()
            seconds[name].append(time.perf_counter() - start)
    in_process.shutdown()
    ray.get(actor.shutdown.remote())
    ray.kill(actor)
    transformers.shutdown()

    results = {}
    for name in paths:
        median = statistics.median(seconds[name])
        results[name] = {"seconds": median, "tokens": tokens[name], "tokens_per_s": tokens[name] / median}
    results["ray_over_in_process"] = (
        results["vllm_ray_actor"]["tokens_per_s"] / results["vllm_in_process"]["tokens_per_s"]
    )
    results["vllm_over_transformers"] = (
        results["vllm_in_process"]["tokens_per_s"] / results["transformers_in_process"]["tokens_per_s"]
    )
    return results


def bench_weight_sync(model: str, args) -> dict:
    """Seconds per push through every worker, by transport, vs object-store round trips of the same bytes."""
    learner_config = LearnerConfig(threads=1)
    learner = ActorGroup.from_config(LearnerWorker, learner_config, model, ModelConfig(), learner_config,
                                     distributed=True)
    config = RolloutConfig(num_workers=args.workers, kv_cache_gib=args.kv_cache_gib, threads=args.threads)
    workers = ActorGroup.from_config(RolloutWorker, config, model, config, enable_lora=False)
    sink = ray.remote(Sink).options(num_cpus=0).remote()
    try:
        state = learner.run(LearnerWorker.weights)[0].tensors  # a plain dict of torch tensors
        gather(workers.map(RolloutWorker.generate, ["1+1="], Sampling.greedy(2)))  # engines up before timing
        collective, object_store = (WeightSync(learner, workers, transport=transport)
                                    for transport in ("collective", "object_store"))
        assert collective.collective and not object_store.collective
        collective_s, _ = timed(collective, args.reps)  # the warm-up call forms the group
        object_store_s, _ = timed(object_store, args.reps)

        def round_trip() -> None:
            ref = ray.put(state)
            ray.get(ref)
            del ref

        def to_actor() -> None:
            ref = ray.put(state)
            ray.get(sink.receive.remote(ref))
            del ref

        round_trip_s, _ = timed(round_trip, args.reps)
        to_actor_s, _ = timed(to_actor, args.reps)
    finally:
        workers.kill()
        learner.kill()
        ray.kill(sink)
    return {
        "parameters": sum(v.numel() for k, v in state.items() if k != "lm_head.weight"),
        "megabytes": sum(t.numel() * t.element_size() for t in state.values()) / 1e6,
        "workers": args.workers,
        "collective_s": collective_s,
        "object_store_s": object_store_s,
        "put_get_round_trip_s": round_trip_s,
        "put_actor_receive_s": to_actor_s,
        "collective_over_round_trip": collective_s / round_trip_s,
        "object_store_over_round_trip": object_store_s / round_trip_s,
    }


def print_table(results: dict) -> None:
    for name, gen in results["generation"].items():
        print_generation(name, gen, results["args"])
    if results["weight_sync"]:
        print_weight_sync(results)


def print_generation(model: str, gen: dict, args: dict) -> None:
    print(f"\ngeneration, {model} model, {args['prompts']} prompts x n={args['n']}, "
          f"{args['max_new_tokens']} new tokens max (median of {args['reps']})")
    print(f"{'path':<26}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}")
    for name in ("vllm_in_process", "vllm_ray_actor", "transformers_in_process"):
        row = gen[name]
        print(f"{name:<26}{row['tokens']:>8}{row['seconds']:>10.3f}{row['tokens_per_s']:>11.0f}")
    print(f"ray actor / in-process: {gen['ray_over_in_process']:.3f}   "
          f"vllm / transformers: {gen['vllm_over_transformers']:.2f}")


def print_weight_sync(results: dict) -> None:
    print(f"\nweight sync (median of {results['args']['reps']}; seconds)")
    print("collective = WeightSync over a gloo/NCCL group; object store = WeightSync through ray.put (numpy,")
    print("zero-copy); put+get = a plain round trip of the same state dict in the driver")
    columns = [
        ("params", "parameters", "{:,}"), ("MB", "megabytes", "{:.0f}"), ("workers", "workers", "{}"),
        ("collective", "collective_s", "{:.3f}"), ("object store", "object_store_s", "{:.3f}"),
        ("put+get", "put_get_round_trip_s", "{:.3f}"), ("put+actor", "put_actor_receive_s", "{:.3f}"),
        ("collective/put+get", "collective_over_round_trip", "{:.2f}"),
        ("object store/put+get", "object_store_over_round_trip", "{:.2f}"),
    ]
    width = {title: max(len(title) + 2, 9) for title, _, _ in columns}
    width["params"] = 13
    print(f"{'model':<8}" + "".join(f"{title:>{width[title]}}" for title, _, _ in columns))
    for name, row in results["weight_sync"].items():
        cells = "".join(f"{fmt.format(row[key]):>{width[title]}}" for title, key, fmt in columns)
        print(f"{name:<8}{cells}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_rollout.json", help="where the JSON results go")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="rollout workers receiving each weight update")
    parser.add_argument("--threads", type=int, default=0, help="compute threads per engine (0 = all cores)")
    parser.add_argument("--kv-cache-gib", type=float, default=0.5, help="per engine; 64 x 4 sequences of the 100m model need ~0.4")
    parser.add_argument("--object-store-gib", type=float, default=1.5)
    parser.add_argument("--skip-big", action="store_true", help="weight sync for the tiny model only")
    parser.add_argument("--skip-generation", action="store_true", help="weight sync only")
    parser.add_argument("--generation-big", action="store_true", help="time generation on the 100m model too")
    parser.add_argument("--skip-sync", action="store_true", help="generation only")
    args = parser.parse_args(argv)

    tiny = resolve_model("tiny:arithmetic")
    models = {"tiny": tiny} if args.skip_big else {"tiny": tiny, "100m": str(build_tiny_model(BIG_SPEC))}
    init_ray(num_cpus=2, object_store_memory=int(args.object_store_gib * 1024**3))
    try:
        results = {"args": vars(args), "generation": {}, "weight_sync": {}}
        for name, path in models.items():
            if not args.skip_generation and (name == "tiny" or args.generation_big):
                results["generation"][name] = bench_generation(path, args)
        for name, path in models.items():
            if not args.skip_sync:
                results["weight_sync"][name] = bench_weight_sync(path, args)
    finally:
        ray.shutdown()
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
