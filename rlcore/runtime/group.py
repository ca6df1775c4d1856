"""Groups of actors: `ActorGroup` (N replicas of one role on a placement group, typed fan-out calls),
`gather`, and `with_retries` for calls whose actors may die and be restarted.

Algorithms build their topology from `ActorGroup`s and never touch placement
groups, ports or environment variables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from rlcore.core import usage
from rlcore.core.batch import Batch
from rlcore.core.config import RoleConfig
from rlcore.runtime.rendezvous import free_endpoint

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


def gather(refs: list[ray.ObjectRef]) -> list:
    """The results of a fan-out, in rank order."""
    return ray.get(refs)


class ActorGroup(Generic[T]):
    """`num_workers` replicas of one actor class on one placement group, with fan-out calls.

    Each replica gets one bundle of the role's own resources (CPUs, GPUs and
    custom resources such as `{"rollout": 1}`). Roles are separate groups, so
    rollouts scale independently of learners: a topology might hold

        rollout_workers = ActorGroup.from_config(RolloutWorker, config.rollout, ...)   # 8 replicas, {"rollout": 1}
        learners = ActorGroup.from_config(LearnerWorker, config.learner, ..., distributed=True)  # 2 ranks, 1 GPU

    and growing `rollout.num_workers` (or adding rollout nodes to `cluster.yaml`)
    changes nothing on the learner side: the custom resource steers rollout
    replicas onto the nodes that advertise it, and the driver loop fans a batch
    out over however many replicas there are (`shard`). A role with
    `num_workers=0` is an empty group.

    Calls name real methods of the actor class, never strings:

        refs = learners.map(LearnerWorker.train_step, batch, objective)   # same arguments to every replica
        refs = rollout_workers.shard(RolloutWorker.generate, batch)       # one contiguous chunk per replica
        refs = group.call(lambda actor: actor.train_step.remote(...))     # anything else, per handle
        results = gather(refs)                                             # = ray.get

    `distributed=True` makes the replicas ranks of one torch.distributed group:
    each is constructed with `rank`, `world_size`, `master_addr` and
    `master_port` (a free port on rank 0's node) and calls
    `init_torch_distributed` itself.
    """

    def __init__(
        self,
        actor_cls: type[T],
        num_workers: int,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        init_args: tuple = (),
        init_kwargs: dict[str, Any] | None = None,
        per_rank_kwargs: Callable[[int], dict[str, Any]] | None = None,
        distributed: bool = False,
        strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK",
        ready_timeout_s: float = 300.0,
        max_restarts: int = 0,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.actor_cls = actor_cls
        self.num_workers = num_workers
        self.placement_group: PlacementGroup | None = None
        self.actors: list = []
        if num_workers == 0:
            return
        bundle = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
        bundle = {key: value for key, value in bundle.items() if value > 0}
        if bundle:
            self.placement_group = placement_group([dict(bundle) for _ in range(num_workers)], strategy=strategy)
            try:
                ray.get(self.placement_group.ready(), timeout=ready_timeout_s)
            except ray.exceptions.GetTimeoutError:
                remove_placement_group(self.placement_group)
                raise RuntimeError(
                    f"{actor_cls.__name__}: no room for {num_workers} x {bundle} after {ready_timeout_s:.0f} s "
                    f"(cluster has {ray.cluster_resources()})"
                ) from None
        rendezvous = self._master_endpoint() if distributed else {}
        remote_cls = ray.remote(actor_cls)
        for rank in range(num_workers):
            kwargs = dict(init_kwargs or {})
            if distributed:
                kwargs.update(rank=rank, world_size=num_workers, **rendezvous)
            if per_rank_kwargs is not None:
                kwargs.update(per_rank_kwargs(rank))
            options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {},
                                       "max_restarts": max_restarts}
            if self.placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=rank
                )
            self.actors.append(remote_cls.options(**options).remote(*init_args, **kwargs))

    @classmethod
    def from_config(
        cls,
        actor_cls: type[T],
        role: RoleConfig,
        *args: Any,
        per_rank_kwargs: Callable[[int], dict[str, Any]] | None = None,
        distributed: bool = False,
        strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK",
        **kwargs: Any,
    ) -> ActorGroup[T]:
        """A group sized and placed by `role`; `args` / `kwargs` go to every replica's constructor."""
        return cls(
            actor_cls,
            num_workers=role.num_workers,
            num_cpus=role.num_cpus,
            num_gpus=role.num_gpus,
            resources=dict(role.resources),
            init_args=args,
            init_kwargs=kwargs,
            per_rank_kwargs=per_rank_kwargs,
            distributed=distributed,
            strategy=strategy,
            max_restarts=0 if distributed else role.max_restarts,  # a lone restarted rank cannot rejoin its group
        )

    def __len__(self) -> int:
        return len(self.actors)

    def handle_method(self, actor, method: Callable):
        """The remote method of `actor` that is `method` of the actor class (a function object, not a name)."""
        name = getattr(method, "__name__", None)
        if name is None or getattr(self.actor_cls, name, None) is not method:
            raise TypeError(f"{method!r} is not a method of {self.actor_cls.__name__}")
        return getattr(actor, name)

    def call(self, fn: Callable[[Any], ray.ObjectRef]) -> list[ray.ObjectRef]:
        """`fn(handle)` for every replica, e.g. `lambda actor: actor.train_step.remote(batch, objective)`."""
        return [fn(actor) for actor in self.actors]

    def map(self, method: Callable[Concatenate[T, P], R], *args: P.args, **kwargs: P.kwargs) -> list[ray.ObjectRef]:
        """Call `method` (e.g. `LearnerWorker.version`) with the same arguments on every replica."""
        return [self.handle_method(actor, method).remote(*args, **kwargs) for actor in self.actors]

    def run(self, method: Callable[Concatenate[T, P], R], *args: P.args, **kwargs: P.kwargs) -> list[R]:
        """`map`, then wait: the results of every replica, in rank order."""
        return gather(self.map(method, *args, **kwargs))

    def shard(self, method: Callable[..., R], batch: Batch, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        """Split `batch` into one contiguous chunk per replica and call `method(chunk, *args, **kwargs)` on each."""
        if not self.actors:
            raise RuntimeError(f"{self.actor_cls.__name__} group has no replicas to shard a batch over")
        chunks = batch.split(len(self.actors))
        return [
            self.handle_method(actor, method).remote(chunk, *args, **kwargs)
            for actor, chunk in zip(self.actors, chunks)
        ]

    def usage(self) -> list[dict[str, Any]]:
        """`rlcore.core.usage.snapshot()` of every replica, taken inside it (busy seconds of its `@busy` methods,
        CPU seconds, peak memory), in rank order. Runs through Ray's `__ray_call__`, so after any call in flight."""
        return gather([actor.__ray_call__.remote(_usage_snapshot) for actor in self.actors])

    def kill(self, shutdown_timeout_s: float = 60.0) -> None:
        """Call `shutdown()` on replicas whose class has one, kill them and free the placement group."""
        shutdown = getattr(self.actor_cls, "shutdown", None)
        if shutdown is not None and self.actors:
            try:
                ray.get(self.map(shutdown), timeout=shutdown_timeout_s)
            except (ray.exceptions.RayError, TimeoutError):
                pass  # a dead or stuck replica is killed below all the same
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None

    def __enter__(self) -> ActorGroup[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()

    def endpoint(self) -> tuple[str, int]:
        """The IP address of rank 0's node and a TCP port free on it right now (for a group rank 0 creates)."""
        if self.placement_group is None:
            node_id = ray.get_runtime_context().get_node_id()
        else:
            node_id = ray.util.placement_group_table(self.placement_group)["bundles_to_node_id"][0]
        probe = ray.remote(free_endpoint).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        )
        return tuple(ray.get(probe.remote()))

    def _master_endpoint(self) -> dict[str, Any]:
        """`master_addr` / `master_port`: a free port on the node of rank 0's bundle."""
        addr, port = self.endpoint()
        return {"master_addr": addr, "master_port": port}


def _usage_snapshot(actor: Any) -> dict[str, Any]:
    """Runs inside an actor's process (`__ray_call__` passes the instance, unused): that process's usage."""
    return usage.snapshot()


def with_retries(
    call: Callable[[], R],
    retries: int,
    what: str,
    before_retry: Callable[[], Any] | None = None,
    restart_timeout_s: float = 300.0,
) -> R:
    """`call()`, retried when an actor under it dies: at most `retries` deaths, each followed by a restart.

    Ray restarts an actor created with `max_restarts` (it runs `__init__` again,
    on the same bundle); calls made while it restarts fail as unavailable, so
    they are repeated once a second for up to `restart_timeout_s`. Before each
    retry `before_retry` brings the restarted actors up to date (e.g. re-sends
    the policy's weights to rollout workers).
    """
    deaths, waiting_since, stale = 0, None, False
    while True:
        try:
            if stale and before_retry is not None:
                before_retry()
            stale = False
            return call()
        except ray.exceptions.ActorUnavailableError as err:  # restarting (or briefly unreachable): wait
            stale = True
            waiting_since = waiting_since or time.monotonic()
            if time.monotonic() - waiting_since > restart_timeout_s:
                raise RuntimeError(f"{what}: an actor stayed unavailable for {restart_timeout_s:.0f} s") from err
            time.sleep(1.0)
        except ray.exceptions.RayActorError as err:  # died; Ray restarts it if it has restarts left
            deaths += 1
            if deaths > retries:
                raise RuntimeError(f"{what}: actors died {deaths} times; giving up after {retries} retries") from err
            print(f"warning: {what}: an actor died ({type(err).__name__}); retry {deaths} of {retries}")
            stale, waiting_since = True, time.monotonic()


