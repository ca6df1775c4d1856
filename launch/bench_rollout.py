"""Rollout benchmark: generation throughput and weight-sync cost.

    python -m launch.bench_rollout --out runs/bench_rollout.json

Three measurements, each the median of `--reps` timed repetitions after one warm-up:

1. Ray overhead: tokens/s of `RolloutWorker.generate` through a Ray actor vs the
   same vLLM engine called in-process, on the same seeded prompts (goal >= 0.95).
2. Engines: vLLM(-CPU) vs transformers `generate` on the same batch (tokens/s ratio).
3. Weight sync: learner-side state dict -> `ray.put` once -> every rollout
   worker's `update_weights`, vs a plain object-store round trip of the same
   state dict (`ray.put` + `ray.get` in the driver; goal <= 1.5x), for the tiny
   model and a ~100M-parameter Qwen2 (hidden 768, 12 layers, random init).
   A second baseline, `put + actor receive`, ships the state dict to an actor
   that only touches it: the transport alone, without loading. "zero-copy" repeats
   the sync with WeightUpdate serialised as numpy arrays (`weights_as_arrays`),
   which Ray maps from shared memory instead of unpickling a copy per reader.

Engines are timed one call at a time, in turn within each repetition (a 2-core machine
cannot time two at once, and turns spread load from other processes evenly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import ray
import torch

from actors.rollout import RolloutWorker, Sampling
from rlcore.core.config import RolloutConfig
from rlcore.core.weights import WeightUpdate
from rlcore.data.tasks import get_task
from rlcore.models.loading import load_model, resolve_model
from rlcore.models.tiny import TinyModelSpec, build_tiny_model
from rlcore.runtime.cluster import init_ray

BIG_SPEC = TinyModelSpec(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_positions=512)
"""~113M parameters with the tiny byte-level tokenizer (vocab 320)."""


def weights_as_arrays(update: WeightUpdate) -> tuple:
    """A WeightUpdate as numpy arrays, which Ray's object store hands to readers without a copy.

    Ray pickles torch tensors (a copy on put and another on every get) but maps numpy
    arrays straight from shared memory. bf16 travels as int16 bits.
    """
    arrays, dtypes = {}, {}
    for name, tensor in update.tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        dtypes[name] = str(tensor.dtype).removeprefix("torch.")
        arrays[name] = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return arrays, dtypes, update.lora_scale, update.version


def weights_from_arrays(payload: tuple) -> WeightUpdate:
    """Inverse of `weights_as_arrays`: read-only tensors over the object store's memory."""
    arrays, dtypes, lora_scale, version = payload
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: the tensors are only read
        tensors = {name: torch.from_numpy(a).view(getattr(torch, dtypes[name])) for name, a in arrays.items()}
    return WeightUpdate(tensors, lora_scale=lora_scale, version=version)


class Sink:
    """An actor that receives a state dict and only touches it: the object-store transport alone."""

    def receive(self, update: WeightUpdate) -> int:
        return update.num_bytes()


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
    """Seconds per update through every worker vs object-store round trips of the same bytes."""
    config = RolloutConfig(kv_cache_gib=args.kv_cache_gib, threads=args.threads)
    remote_worker = ray.remote(RolloutWorker).options(num_cpus=2 / (args.workers + 1))
    workers = [remote_worker.remote(model, config) for _ in range(args.workers)]
    sink = ray.remote(Sink).options(num_cpus=0).remote()
    torch.manual_seed(1)
    state = {k: v.detach().clone() for k, v in load_model(model).state_dict().items()}
    state = {k: v + 1e-3 * torch.randn_like(v) for k, v in state.items()}  # the learner's next weights
    update = WeightUpdate(state, version=1)
    in_worker = []

    def sync() -> None:
        ref = ray.put(update)
        in_worker.append(max(ray.get([w.update_weights.remote(ref) for w in workers])))
        del ref

    def round_trip() -> None:
        ref = ray.put(update)
        ray.get(ref)
        del ref

    def to_actor() -> None:
        ref = ray.put(update)
        ray.get(sink.receive.remote(ref))
        del ref

    ray.get([w.generate.remote(["1+1="], Sampling.greedy(2)) for w in workers])  # engines up before timing
    sync_s, _ = timed(sync, args.reps)
    in_worker_s = statistics.median(in_worker[1:])
    round_trip_s, _ = timed(round_trip, args.reps)
    to_actor_s, _ = timed(to_actor, args.reps)
    ray.util.register_serializer(WeightUpdate, serializer=weights_as_arrays, deserializer=weights_from_arrays)
    try:
        in_worker.clear()
        zero_copy_sync_s, _ = timed(sync, args.reps)
        zero_copy_in_worker_s = statistics.median(in_worker[1:])
    finally:
        ray.util.deregister_serializer(WeightUpdate)
    for worker in workers:
        ray.get(worker.shutdown.remote())
        ray.kill(worker)
    ray.kill(sink)
    return {
        "parameters": sum(v.numel() for k, v in state.items() if k != "lm_head.weight"),
        "megabytes": update.num_bytes() / 1e6,
        "workers": args.workers,
        "sync_s": sync_s,
        "update_weights_in_worker_s": in_worker_s,
        "put_get_round_trip_s": round_trip_s,
        "put_actor_receive_s": to_actor_s,
        "sync_over_round_trip": sync_s / round_trip_s,
        "sync_over_actor_receive": sync_s / to_actor_s,
        "zero_copy_sync_s": zero_copy_sync_s,
        "zero_copy_update_weights_in_worker_s": zero_copy_in_worker_s,
        "zero_copy_sync_over_round_trip": zero_copy_sync_s / round_trip_s,
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
    print("sync = ray.put(update) once + every worker's update_weights; in worker = update_weights alone;")
    print("zero-copy = the same sync with WeightUpdate travelling as numpy arrays (weights_as_arrays)")
    columns = [
        ("params", "parameters", "{:,}"), ("MB", "megabytes", "{:.0f}"), ("workers", "workers", "{}"),
        ("sync", "sync_s", "{:.3f}"), ("in worker", "update_weights_in_worker_s", "{:.3f}"),
        ("put+get", "put_get_round_trip_s", "{:.3f}"), ("put+actor", "put_actor_receive_s", "{:.3f}"),
        ("sync/put+get", "sync_over_round_trip", "{:.2f}"), ("zero-copy sync", "zero_copy_sync_s", "{:.3f}"),
        ("zero-copy/put+get", "zero_copy_sync_over_round_trip", "{:.2f}"),
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
