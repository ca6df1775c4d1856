"""Collective weight sync: learner rank 0 broadcasts each tensor into every vLLM worker that serves the policy.

The pattern of vLLM's RLHF example (examples/offline_inference/rlhf.py), with
the transport picked by device: learner rank 0 and the workers of every engine
that serves the policy (rollout engines, a self-judging reward engine) form one
`WeightGroup`, a process group of their own, independent of the
torch.distributed group the learner ranks train in. On GPU it is vLLM's
`PyNcclCommunicator` over a `StatelessProcessGroup`; on CPU a gloo group
(`stateless_init_torch_distributed_process_group`), so the same protocol runs
in CI. Rank 0 is the learner; the workers of engine k take ranks
`rank_offset + i`. Per update the learner broadcasts each tensor from rank 0
while every worker receives it into an empty tensor of the announced name,
dtype and shape.

Received tensors are handed to the worker's `reload_weights` (checkpoint
format), so vLLM's own weight loaders fuse q/k/v and gate/up, cast, and repack
for the platform as they do at load time. An update must hold every tensor of
each fused layer it touches (all of q/k/v weights and biases, gate and up):
`reload_weights` rebuilds a layer from what it is given. `reload_weights` consumes an
iterator, so the receive loop runs lazily inside it: one tensor in flight at a
time, no second copy of the model on either side.

NCCL needs one GPU per rank: learner rank 0 and the rollout workers must sit on
different GPUs (NCCL refuses two ranks on one device).

`LLM(worker_extension_cls="actors.vllm_ext.WeightSyncExtension")` mixes this
class into vLLM's worker; its methods are called with `llm.collective_rpc`.
The learner side is `WeightGroup` + `broadcast_weights` (actors.learner.LearnerWorker.broadcast_weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta

import torch

EXTENSION = "actors.vllm_ext.WeightSyncExtension"
"""What to pass as vLLM's `worker_extension_cls`."""
EMBEDDINGS, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIMEOUT = timedelta(minutes=10)
"""How long a member waits for the others (joining, or one broadcast) before the group fails."""


class WeightGroup:
    """Rank `rank` of `world_size` in a broadcast-from-rank-0 group: NCCL on a GPU `device`, gloo on the CPU.

    Every member must join at the same time (the constructor blocks until all have).
    The learner joins with rank 0 at `address:port`, a free port on its node.
    """

    def __init__(self, address: str, port: int, rank: int, world_size: int, device: torch.device) -> None:
        if device.type == "cuda":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            group = StatelessProcessGroup.create(host=address, port=port, rank=rank, world_size=world_size,
                                                 store_timeout=int(TIMEOUT.total_seconds()))
            self.nccl, self.gloo = PyNcclCommunicator(group, device=device), None
        else:
            from vllm.distributed.utils import stateless_init_torch_distributed_process_group

            self.nccl = None
            self.gloo = stateless_init_torch_distributed_process_group(address, port, rank, world_size, "gloo",
                                                                       timeout=TIMEOUT)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0 sends `tensor`; every other rank receives into it (same dtype and shape)."""
        if self.nccl is not None:
            self.nccl.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
        else:
            self.gloo.broadcast(tensor, 0).wait()

    def synchronize(self) -> None:
        if self.nccl is not None:
            torch.cuda.current_stream().synchronize()

    def close(self) -> None:
        if self.gloo is not None:
            from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

            stateless_destroy_torch_distributed_process_group(self.gloo)
        self.nccl = self.gloo = None


def broadcast_weights(group: WeightGroup, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Learner side of an update: broadcast each tensor from rank 0, in the order the workers expect.

    The workers must be inside `WeightSyncExtension.receive_weights` with the same
    (name, dtype, shape) list, e.g. from `weight_metadata(named_tensors)`.
    """
    for _, tensor in named_tensors:
        group.broadcast(tensor.contiguous())
    group.synchronize()


def weight_metadata(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.dtype, tuple]]:
    """(name, dtype, shape) of each tensor: what the workers need to receive a broadcast."""
    return [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in named_tensors]


class WeightSyncExtension:
    """Methods mixed into vLLM's GPU/CPU worker (which provides `self.device` and `self.reload_weights`)."""

    def init_weight_update_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int):
        """Join the learner's weight-update group as rank `rank_offset` + this worker's rank in its engine
        (leaving the group it was in, if any)."""
        from vllm.distributed.parallel_state import get_world_group

        self.close_weight_update_group()
        rank = get_world_group().rank + rank_offset
        self.weight_update_group = WeightGroup(master_address, master_port, rank, world_size, self.device)

    def close_weight_update_group(self) -> None:
        group = getattr(self, "weight_update_group", None)
        if group is not None:
            group.close()
        self.weight_update_group = None

    def receive_weights(self, names_dtypes_shapes: list[tuple[str, torch.dtype, tuple]]) -> None:
        """Receive one broadcast per (name, dtype, shape) from rank 0 and load them in place."""
        group = self.weight_update_group
        tied = getattr(self.model_config.hf_config, "tie_word_embeddings", False)
        names = {name for name, _, _ in names_dtypes_shapes}

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype, shape in names_dtypes_shapes:
                tensor = torch.empty(shape, dtype=dtype, device=self.device)
                group.broadcast(tensor)
                yield name, tensor
                if tied and name == EMBEDDINGS and LM_HEAD not in names:
                    yield LM_HEAD, tensor  # the tied head is its own layer to vLLM (see rollout.with_tied_head)

        self.reload_weights(weights_iterator=received(), is_checkpoint_format=True)
        group.synchronize()
