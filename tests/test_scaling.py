"""Independent scaling on a simulated cluster (launch/bench_scaling.py): placement by role config, rollout speed-up.

Head + 2 rollout nodes ({"rollout": 1}) + a learner node ({"learner": 4}), all on this machine.
The placement check is exact. The throughput check is a shortened `python -m launch.bench_scaling`:
its hard assertion is on CPU time (tokens per CPU second of the busiest worker, 2 workers over 1),
which the load of a shared machine does not move much; the wall-clock ratio is printed, and asserted
only when the machine was not oversubscribed during the run. Both are held against what the machine
itself gives two processes of plain compute at the same time (`hardware_speedup`): two CPUs that are
siblings of one core, or shared with other tenants, cannot give two workers more.
"""

from __future__ import annotations

import os

import pytest
import ray

from actors.rollout import Sampling
from launch.bench_scaling import (
    PPO_OVERRIDES,
    check_placement,
    hardware_speedup,
    node_label,
    node_resources,
    ppo_placement,
    scaling,
    start_cluster,
)
from rlcore.data.tasks import get_task
from rlcore.models.build import build_model


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.shutdown()  # never share a driver connection with another module's cluster
    cluster = start_cluster(rollout_nodes=2)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ppo_roles_land_only_on_nodes_with_their_resource():
    placement = ppo_placement()
    check_placement(placement)
    labels = {node_id: node_label(resources) for node_id, resources in node_resources().items()}
    assert [labels[n] for n in placement["rollout"]] == ["rollout", "rollout"]
    assert len(set(placement["rollout"])) == 2  # one replica per rollout node
    for role in ("learner", "critic", "reference", "reward"):
        assert [labels[n] for n in placement[role]] == ["learner"], role
    # a replica on a node without its resource is caught
    wrong = dict(placement, rollout=[placement["learner"][0], placement["rollout"][1]])
    with pytest.raises(AssertionError, match="rollout replica on node"):
        check_placement(wrong)


def test_rollout_replicas_scale_without_touching_other_roles():
    overrides = [o for o in PPO_OVERRIDES if not o.startswith("rollout.num_workers")] + ["rollout.num_workers=1"]
    one = ppo_placement(overrides)
    check_placement(one, overrides)
    two = ppo_placement()
    assert (len(one["rollout"]), len(two["rollout"])) == (1, 2)
    assert {role: len(nodes) for role, nodes in one.items() if role != "rollout"} == \
        {role: len(nodes) for role, nodes in two.items() if role != "rollout"}


def test_two_rollout_workers_generate_faster_than_one():
    prompts = [example.prompt for example in get_task("arithmetic").examples("train", 256)]
    load_before = os.getloadavg()[0]
    machine = hardware_speedup()  # what 2 processes of plain compute gain here, right now
    result = scaling(build_model("tiny:arithmetic"), prompts, Sampling(n=4, max_new_tokens=8), rounds=1, calls=2)
    load_after = os.getloadavg()[0]
    one, two = result["runs"][0][1], result["runs"][0][2]
    print(f"2 vs 1 rollout workers: wall {result['ratio']:.2f}x, CPU-time {result['cpu_time_ratio']:.2f}x; "
          f"plain compute on this machine: wall {machine['ratio']:.2f}x, CPU-time {machine['cpu_time_ratio']:.2f}x "
          f"(load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs)")
    assert abs(two["tokens"] - one["tokens"]) < 0.1 * one["tokens"]  # the same work
    busiest, idlest = max(two["worker_cpu_s"]), min(two["worker_cpu_s"])
    assert idlest > 0.6 * busiest  # the prompts were split evenly
    # the workers keep most of what the machine gives: on 2 free cores plain compute gains ~1.9-2.0x
    # and the workers 1.47-1.83x; on a CI machine whose 2 CPUs gained 1.08x the bar follows it down
    assert result["cpu_time_ratio"] >= 0.65 * machine["cpu_time_ratio"]
    if max(load_before, load_after) < os.cpu_count():
        assert result["ratio"] >= 0.75 * machine["ratio"]
