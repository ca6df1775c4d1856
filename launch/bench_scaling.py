"""Independent scaling on a simulated multi-node cluster: where each role lands, and rollout throughput vs replicas.

    python -m launch.bench_scaling [--rounds 3] [--prompts 512] [--n 8] [--calls 3] [--model tiny:arithmetic]

The cluster (`ray.cluster_utils.Cluster`, all nodes on this machine) mirrors cluster.yaml: a head with
no custom resource, two rollout nodes (`{"rollout": 1}`, 1 CPU each) and a learner node
(`{"learner": 4}`). A PPO config with per-role overrides, as `rlcore train` would read them,

    rollout.num_workers=2 rollout.resources={rollout: 1}     learner / critic / reference / reward: {learner: 1}

is placed role by role (`ActorGroup.from_config`, as `algorithms/ppo.py::build_topology` does) with a
stand-in actor that reports its node, and every replica must be on a node that has its resource.

Throughput: tokens/s of `actors.driver.generate` over 1, then 2 vLLM rollout workers (threads=1
each, one per rollout node) on the same prompts, sampling n responses per prompt. Each round starts
the group afresh, warms it up, and times `calls` calls; the order of the two sizes alternates between
rounds so that drift in the machine's load hits both. The ratio is the median over rounds of
tokens/s(2 workers) / tokens/s(1 worker): with one thread per worker and 2 free cores it can approach
2; on a busy machine it measures how much more CPU time two processes win than one (the load average
and the cores the workers actually got are printed alongside), not a property of rlcore.

`cpu_time_ratio` takes the machine's load out: tokens per CPU second of the busiest worker, 2 workers
over 1, i.e. the speed-up if each worker had a core (a node) to itself. It leaves out the driver's
serial share and transfer waits, so it is an upper bound that the wall-time ratio approaches on idle
nodes; if it is near 2, splitting prompts over workers costs the workers nothing extra.

`hardware` is the reference for both: the same two ratios for a fixed compute-bound workload (one
thread, small matmuls) split over 2 plain processes vs 1, measured before the cluster starts. Two CPUs
that are siblings of one core, or shared with other tenants, give less than 2 to any two processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import ray
from ray.cluster_utils import Cluster

from actors.driver import generate
from actors.rollout import RolloutWorker, Sampling
from algorithms import ppo
from rlcore.core.config import RolloutConfig, load_config
from rlcore.data.tasks import get_task
from rlcore.models.loading import resolve_model
from rlcore.runtime.cluster import OBJECT_STORE_BYTES, init_ray
from rlcore.runtime.group import ActorGroup, gather

ROLES = ("rollout", "reward", "reference", "critic", "learner")

PPO_OVERRIDES = [
    "rollout.num_workers=2", "rollout.num_cpus=1", "rollout.threads=1", "rollout.resources={rollout: 1}",
    "learner.num_workers=1", "learner.resources={learner: 1}",
    "critic.num_workers=1", "critic.resources={learner: 1}",
    "reference.num_workers=1", "reference.resources={learner: 1}",
    "reward.num_workers=1", "reward.resources={learner: 1}",
]
"""Per-role replica counts and resources for the simulated cluster, as command-line overrides."""


class Placed:
    """Stand-in for a role's actor: it only says where it runs."""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def start_cluster(rollout_nodes: int = 2) -> Cluster:
    """Head (1 CPU, no custom resource), `rollout_nodes` x {CPU: 1, rollout: 1}, one {CPU: 1, learner: 4}."""
    small = {"object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **small})
    for _ in range(rollout_nodes):
        cluster.add_node(num_cpus=1, resources={"rollout": 1}, object_store_memory=OBJECT_STORE_BYTES)
    cluster.add_node(num_cpus=1, resources={"learner": 4}, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    return cluster


def node_resources() -> dict[str, dict[str, float]]:
    """node id -> resources of every live node."""
    return {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}


def node_label(resources: dict[str, float]) -> str:
    """A node's custom resources, e.g. "rollout" ("head" for a node with none)."""
    custom = sorted(k for k in resources if k not in ("CPU", "GPU", "memory", "object_store_memory")
                    and not k.startswith("node:"))
    return "+".join(custom) or "head"


def ppo_placement(overrides: list[str] = PPO_OVERRIDES) -> dict[str, list[str]]:
    """Role -> node id of each replica, for a PPO config built from `overrides` (stand-in actors, then freed)."""
    config = load_config(ppo.Config, None, overrides)
    groups = {role: ActorGroup.from_config(Placed, getattr(config, role)) for role in ROLES}
    try:
        return {role: group.run(Placed.node_id) for role, group in groups.items()}
    finally:
        for group in groups.values():
            group.kill()


def check_placement(placement: dict[str, list[str]], overrides: list[str] = PPO_OVERRIDES) -> None:
    """Each role has its configured replica count, all on nodes that offer its custom resources."""
    config = load_config(ppo.Config, None, overrides)
    nodes = node_resources()
    for role, node_ids in placement.items():
        role_config = getattr(config, role)
        assert len(node_ids) == role_config.num_workers, (role, node_ids)
        for node_id in node_ids:
            missing = [name for name in role_config.resources if name not in nodes[node_id]]
            assert not missing, f"{role} replica on node {node_id[:8]} which lacks {missing}"


@dataclass
class Measurement:
    workers: int
    tokens: int
    seconds: float
    """Wall time of the timed calls."""
    worker_cpu_s: list[float]
    """CPU seconds each worker process used during the timed calls (all its threads)."""
    driver_cpu_s: float
    """CPU seconds this (driver) process used during the timed calls."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def cores_used(self) -> float:
        """Worker CPU seconds per wall second: how much of the machine the workers actually got."""
        return sum(self.worker_cpu_s) / self.seconds

    @property
    def tokens_per_busiest_cpu_s(self) -> float:
        """Tokens per CPU second of the busiest worker: the rate if every worker had a core to itself."""
        return self.tokens / max(self.worker_cpu_s)


def process_cpu_seconds(actor) -> float:
    """CPU time of the process an actor lives in (run through `actor.__ray_call__`)."""
    return time.process_time()


HARDWARE_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(192, 192)
print("ready", flush=True)
sys.stdin.readline()
iterations, cpu, start = int(sys.argv[1]), time.process_time(), time.perf_counter()
for _ in range(iterations):
    a = torch.tanh(a @ a)
print(time.process_time() - cpu, time.perf_counter() - start, flush=True)
"""
"""One process's share of a fixed compute-bound workload: one thread, small matmuls; prints CPU and wall seconds."""


def run_probes(processes: int, iterations: int) -> list[tuple[float, float]]:
    """Split `iterations` over `processes` probe processes started together; (cpu_s, wall_s) of each."""
    children = [subprocess.Popen([sys.executable, "-c", HARDWARE_PROBE, str(iterations // processes)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    try:
        for child in children:  # torch imported and warm in every process before any starts
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        return [tuple(map(float, child.communicate(timeout=300)[0].split())) for child in children]
    finally:
        for child in children:
            child.kill()


def hardware_speedup(iterations: int = 6000) -> dict:
    """What 2 processes gain over 1 on this machine right now, for plain compute with no rlcore in it.

    The reference for the rollout ratios: on 2 free physical cores both are near 2; where the two CPUs
    are siblings of one core or shared with other tenants, the machine itself gives less, and so will
    any 2 workers on it.
    """
    (one_cpu, one_wall), = run_probes(1, iterations)
    two = run_probes(2, iterations)
    return {"ratio": one_wall / max(wall for _, wall in two),
            "cpu_time_ratio": one_cpu / max(cpu for cpu, _ in two)}


def measure(model: str, prompts: list[str], sampling: Sampling, workers: int, calls: int) -> Measurement:
    """Start `workers` rollout workers (threads=1, one `rollout` unit each), warm up, time `calls` generate calls."""
    config = RolloutConfig(num_workers=workers, num_cpus=1, threads=1, resources={"rollout": 1}, kv_cache_gib=0.25)
    group = ActorGroup.from_config(RolloutWorker, config, model, config)

    def worker_cpu() -> list[float]:
        return gather(group.call(lambda actor: actor.__ray_call__.remote(process_cpu_seconds)))

    try:
        generate(group, prompts[: 8 * workers], sampling)  # engines loaded, first-call costs paid
        tokens, cpu_before, driver_before = 0, worker_cpu(), time.process_time()
        start = time.perf_counter()
        for _ in range(calls):
            tokens += int(generate(group, prompts, sampling).response_mask.sum())
        seconds = time.perf_counter() - start
        cpu = [after - before for before, after in zip(cpu_before, worker_cpu())]
        return Measurement(workers, tokens, seconds, cpu, time.process_time() - driver_before)
    finally:
        group.kill()


def scaling(model: str, prompts: list[str], sampling: Sampling, rounds: int, calls: int) -> dict:
    """Alternate 1- and 2-worker measurements; median ratios and every measurement."""
    runs = []
    for round_index in range(rounds):
        sizes = (1, 2) if round_index % 2 == 0 else (2, 1)
        by_size = {size: measure(model, prompts, sampling, size, calls) for size in sizes}
        runs.append(by_size)
        one, two = by_size[1], by_size[2]
        print(f"round {round_index + 1}/{rounds}: tokens/s 1 worker {one.tokens_per_s:,.0f}, 2 workers "
              f"{two.tokens_per_s:,.0f}, ratio {two.tokens_per_s / one.tokens_per_s:.2f}; cores used "
              f"{one.cores_used:.2f} vs {two.cores_used:.2f}; load average {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [run[2].tokens_per_s / run[1].tokens_per_s for run in runs]
    cpu_ratios = [run[2].tokens_per_busiest_cpu_s / run[1].tokens_per_busiest_cpu_s for run in runs]
    return {
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cpu_time_ratio": statistics.median(cpu_ratios),
        "cpu_time_ratios": cpu_ratios,
        "runs": [{size: asdict(run[size]) | {"tokens_per_s": run[size].tokens_per_s,
                                              "cores_used": run[size].cores_used} for size in (1, 2)}
                 for run in runs],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m launch.bench_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:arithmetic")
    parser.add_argument("--prompts", type=int, default=512, help="prompts per generate call")
    parser.add_argument("--n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--calls", type=int, default=3, help="timed generate calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="1-vs-2 worker measurement pairs")
    args = parser.parse_args(argv)

    model = resolve_model(args.model)  # build / find the cached tiny model once, before the workers do
    prompts = [example.prompt for example in get_task("arithmetic").examples("train", args.prompts)]
    sampling = Sampling(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens)
    load_before = os.getloadavg()
    machine = hardware_speedup()
    print(f"plain compute, 2 processes over 1: wall {machine['ratio']:.2f}x, CPU-time {machine['cpu_time_ratio']:.2f}x")
    cluster = start_cluster()
    try:
        placement = ppo_placement()
        check_placement(placement)
        labels = {node_id: f"{node_label(r)}@{node_id[:6]}" for node_id, r in node_resources().items()}
        print("placement:", json.dumps({role: [labels[n] for n in nodes] for role, nodes in placement.items()}))
        result = scaling(model, prompts, sampling, args.rounds, args.calls)
    finally:
        ray.shutdown()
        cluster.shutdown()
    result.update(hardware=machine, load_average_before=load_before, load_average_after=os.getloadavg(),
                  cpus=os.cpu_count(), prompts=args.prompts, n=args.n, max_new_tokens=args.max_new_tokens, model=args.model)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
