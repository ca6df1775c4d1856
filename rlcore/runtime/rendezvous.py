"""Rendezvous of learner ranks: free ports and the torch.distributed group (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import ray


def free_port() -> int:
    """A TCP port free on this node right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def free_endpoint() -> tuple[str, int]:
    """This node's IP address and a TCP port free on it right now."""
    return ray.util.get_node_ip_address(), free_port()


def init_torch_distributed(
    rank: int = 0,
    world_size: int = 1,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout_s: float = 600.0,
) -> str:
    """Join (or, with one rank and no address, create) the torch.distributed group of this process.

    Sets MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK and calls
    `deepspeed.init_distributed` with gloo on CPU or nccl on GPU. LOCAL_RANK is 0:
    Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES. Returns the backend.
    """
    import deepspeed
    import torch

    if master_addr is None or master_port is None:
        if world_size > 1:
            raise ValueError("ranks of a group of more than one need master_addr and master_port")
        master_addr, master_port = "127.0.0.1", free_port()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.update(
        MASTER_ADDR=str(master_addr),
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
    )
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        distributed_port=int(master_port),
        verbose=False,
        timeout=timedelta(seconds=timeout_s),
        rank=rank,
        world_size=world_size,
    )
    return backend
