"""Starting Ray: a private local instance on a laptop, or joining a cluster brought up with `ray up`.

Also the environment every actor needs (vLLM-CPU settings, offline wandb, the
model cache) and the object-store size of a local instance.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import ray

from rlcore.core.config import RoleConfig

R = TypeVar("R", bound=RoleConfig)

OBJECT_STORE_BYTES = 200 * 1024**2
"""Object-store size of a local Ray instance: batches and tiny-model weights fit with room to spare."""

WORKER_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine in the actor's process: fast weight updates (NOTES.md)
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",  # else vLLM-CPU computes on one core of two
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vLLM's default asks for 92 % of a NUMA node
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "offline",
}
"""Environment every actor needs. A variable already set in the driver's environment wins."""

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
"""The folder holding `rlcore/` and `actors/`, put on the workers' PYTHONPATH."""


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars shipped to every Ray worker: defaults, overridden by the driver's env, then by `extra`."""
    env = {key: os.environ.get(key, value) for key, value in WORKER_ENV_DEFAULTS.items()}
    if "RLCORE_CACHE" in os.environ:
        env["RLCORE_CACHE"] = os.environ["RLCORE_CACHE"]
    paths = [PACKAGE_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


def init_ray(
    num_cpus: float | None = None,
    address: str | None = None,
    env: dict[str, str] | None = None,
    object_store_memory: int = OBJECT_STORE_BYTES,
    **kwargs: Any,
) -> None:
    """Start (or join) Ray with a runtime env that carries `worker_env(env)` to every actor.

    With no `address` and no RAY_ADDRESS this starts a private local instance
    (no dashboard, a small object store); otherwise it connects to that cluster
    (`ray up` / `ray start --head`), whose nodes bring their own resources.
    Does nothing if this process is already connected. Extra `kwargs` go to `ray.init`.
    """
    if ray.is_initialized():
        return
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**worker_env(env), **runtime_env.get("env_vars", {})}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        return
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_memory,
        runtime_env=runtime_env,
        **kwargs,
    )




def role_threads(role: R, sharing: int = 0) -> R:
    """`role` with its compute threads per replica settled, so that replicas computing at the same time never ask
    for more cores than the machine has.

    `threads` > 0 is kept. Otherwise a replica that reserves whole CPUs (`num_cpus` >= 1) uses that many; a
    fractional reservation means the roles time-share one machine (a laptop, CI), and the replica gets the
    machine's cores split between the `sharing` replicas that compute at the same time (default: the role's
    own replicas; PPO's policy and critic ranks update together, so they share).
    """
    if role.threads:
        return role
    if role.num_cpus >= 1:
        return replace(role, threads=int(role.num_cpus))
    return replace(role, threads=max(1, len(os.sched_getaffinity(0)) // max(1, sharing or role.num_workers)))
