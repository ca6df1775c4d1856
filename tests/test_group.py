"""ActorGroup on a multi-node Ray cluster simulated in this process (`ray.cluster_utils.Cluster`).

The cluster has a head (4 CPUs), a rollout node (`{"rollout": 2}`) and a learner
node (`{"learner": 1}`), so placement by custom resource can be checked by node id.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import RoleConfig
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather
from rlcore.runtime.rendezvous import init_torch_distributed

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor classes below travel by value


class Echo:
    """A small actor with typed methods, to watch where calls go."""

    def __init__(self, tag: str, offset: int = 0, marker_dir: str | None = None) -> None:
        self.tag = tag
        self.offset = offset
        self.marker_dir = marker_dir

    def add(self, x: int) -> int:
        return x + self.offset

    def rows(self, batch: Batch) -> list[int]:
        return batch.group.tolist()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def env(self, key: str) -> str | None:
        return os.environ.get(key)

    def shutdown(self) -> None:
        if self.marker_dir:
            (Path(self.marker_dir) / f"{self.tag}-{self.offset}").touch()


class Other:
    def add(self, x: int) -> int:
        return x


class AllReduce:
    """A rank of a torch.distributed group set up by ActorGroup(distributed=True)."""

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        self.rank = rank
        self.backend = init_torch_distributed(rank, world_size, master_addr, master_port)

    def sum_of_ranks(self) -> float:
        value = torch.tensor([float(self.rank)])
        torch.distributed.all_reduce(value)
        return value.item()


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.shutdown()  # never share a driver connection with another module's cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    cluster.add_node(num_cpus=2, resources={"rollout": 2})
    cluster.add_node(num_cpus=1, resources={"learner": 1})
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    init_ray(address=cluster.address)  # idempotent
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def node_of_resource(name: str) -> str:
    return next(node["NodeID"] for node in ray.nodes() if node["Alive"] and name in node["Resources"])


def test_fan_out_and_gather_with_real_methods():
    with ActorGroup(Echo, 3, num_cpus=0.25, init_args=("echo",), per_rank_kwargs=lambda r: {"offset": 10 * r}) as group:
        assert len(group) == 3
        assert group.run(Echo.add, 1) == [1, 11, 21]
        assert gather(group.map(Echo.add, x=2)) == [2, 12, 22]
        assert gather(group.call(lambda actor: actor.add.remote(5))) == [5, 15, 25]
        assert group.run(Echo.env, "VLLM_ENABLE_V1_MULTIPROCESSING") == ["0"] * 3  # init_ray's runtime env
        with pytest.raises(TypeError, match="not a method of Echo"):
            group.map(Other.add, 1)
        with pytest.raises(TypeError):
            group.map(lambda actor, x: x, 1)


def test_shard_splits_a_batch_into_contiguous_chunks():
    batch = make_batch([[1, 2]] * 7, [[3]] * 7, pad_token_id=0)
    with ActorGroup(Echo, 3, num_cpus=0.25, init_args=("shard",)) as group:
        chunks = gather(group.shard(Echo.rows, batch))
    assert chunks == [[0, 1], [2, 3, 4], [5, 6]]  # Batch.split(3) of 7 rows


def test_replica_counts_are_per_role(tmp_path):
    role = RoleConfig(num_workers=3, num_cpus=0.25)
    rollout = ActorGroup.from_config(
        Echo, role, "rollout", marker_dir=str(tmp_path), per_rank_kwargs=lambda rank: {"offset": rank}
    )
    learner = ActorGroup.from_config(Echo, RoleConfig(num_workers=1, num_cpus=0.25), "learner", marker_dir=str(tmp_path))
    reward = ActorGroup.from_config(Echo, RoleConfig(num_workers=0), "reward")
    assert (len(rollout), len(learner), len(reward)) == (3, 1, 0)
    assert rollout.run(Echo.add, 1) == [1, 2, 3] and learner.run(Echo.add, 1) == [1]
    assert reward.run(Echo.add, 1) == [] and reward.placement_group is None

    placement = rollout.placement_group
    for group in (rollout, learner, reward):
        group.kill()
    # kill() called shutdown() on every replica, then removed the placement group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learner-0", "rollout-0", "rollout-1", "rollout-2"]
    assert ray.util.placement_group_table(placement)["state"] == "REMOVED"


def test_custom_resources_steer_replicas_to_their_nodes():
    rollout = ActorGroup(Echo, 2, num_cpus=0.5, resources={"rollout": 1}, init_args=("rollout",))
    learner = ActorGroup(Echo, 1, num_cpus=0.5, resources={"learner": 1}, init_args=("learner",))
    try:
        assert rollout.run(Echo.node_id) == [node_of_resource("rollout")] * 2
        assert learner.run(Echo.node_id) == [node_of_resource("learner")]
    finally:
        rollout.kill()
        learner.kill()


def test_distributed_group_forms_one_torch_process_group():
    with ActorGroup(AllReduce, 2, num_cpus=0.5, distributed=True) as group:
        assert group.run(AllReduce.sum_of_ranks) == [1.0, 1.0]  # 0 + 1 on every rank


def test_role_threads_follow_the_cpu_share_and_split_a_shared_machine():
    from rlcore.runtime.cluster import role_threads

    cores = len(os.sched_getaffinity(0))
    assert role_threads(RoleConfig(threads=3)).threads == 3  # set explicitly: kept
    assert role_threads(RoleConfig(num_cpus=4)).threads == 4  # whole CPUs reserved: that many
    assert role_threads(RoleConfig(num_cpus=0.25)).threads == cores  # alone on the machine: all its cores
    assert role_threads(RoleConfig(num_cpus=0.25), sharing=2).threads == max(1, cores // 2)
    assert role_threads(RoleConfig(num_cpus=0.25, num_workers=cores * 2)).threads == 1  # never below one
