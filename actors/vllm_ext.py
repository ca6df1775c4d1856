"""vLLM worker extension: weights broadcast over NCCL from learner rank 0 into the vLLM workers (GPU).

The pattern of vLLM's RLHF example (examples/offline_inference/rlhf.py): learner
rank 0 and every vLLM worker join a `StatelessProcessGroup` (vLLM's own
rendezvous over a TCP store, independent of any torch.distributed group the
learners already use) and build a `PyNcclCommunicator` on it. Rank 0 is the
learner; the workers of rollout engine k take ranks `rank_offset + i`. Per
update the learner broadcasts each tensor from rank 0 while every worker
receives it into an empty tensor of the announced name, dtype and shape.

Received tensors are handed to the worker's `reload_weights` (checkpoint
format), so vLLM's own weight loaders fuse q/k/v and gate/up, cast, and repack
for the platform as they do at load time. An update must hold every tensor of
each fused layer it touches (all of q/k/v weights and biases, gate and up):
`reload_weights` rebuilds a layer from what it is given. `reload_weights` consumes an
iterator, so the receive loop runs lazily inside it: one tensor in flight at a
time, no second copy of the model on the device.

NCCL needs one GPU per rank: learner rank 0 and the rollout workers must sit on
different GPUs (NCCL refuses two ranks on one device).

`LLM(worker_extension_cls="actors.vllm_ext.WeightSyncExtension")` mixes this
class into vLLM's worker; its methods are called with `llm.collective_rpc`.
The learner side is `open_weight_group` + `broadcast_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

EXTENSION = "actors.vllm_ext.WeightSyncExtension"
"""What to pass as vLLM's `worker_extension_cls`."""
EMBEDDINGS, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"


def open_weight_group(master_address: str, master_port: int, rank: int, world_size: int, device):
    """Join the weight-update group as `rank` of `world_size` on `device`; returns the NCCL communicator.

    Every member must call this at the same time (it blocks until all have joined).
    The learner calls it with rank 0 and master_address/master_port of a free port on its node.
    """
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


def broadcast_weights(communicator, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Learner side of an update: broadcast each tensor from rank 0, in the order the workers expect.

    The workers must be inside `WeightSyncExtension.receive_weights` with the same
    (name, dtype, shape) list, e.g. from `weight_metadata(named_tensors)`.
    """
    for _, tensor in named_tensors:
        communicator.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
    torch.cuda.current_stream().synchronize()


def weight_metadata(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.dtype, tuple]]:
    """(name, dtype, shape) of each tensor: what the workers need to receive a broadcast."""
    return [(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in named_tensors]


class WeightSyncExtension:
    """Methods mixed into vLLM's GPU/CPU worker (which provides `self.device` and `self.reload_weights`)."""

    def init_weight_update_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int):
        """Join the learner's weight-update group as rank `rank_offset` + this worker's rank in its engine."""
        from vllm.distributed.parallel_state import get_world_group

        rank = get_world_group().rank + rank_offset
        self.weight_update_group = open_weight_group(master_address, master_port, rank, world_size, self.device)

    def receive_weights(self, names_dtypes_shapes: list[tuple[str, torch.dtype, tuple]]) -> None:
        """Receive one broadcast per (name, dtype, shape) from rank 0 and load them in place."""

        on_gpu = self.device.type == "cuda"
        tied = getattr(self.model_config.hf_config, "tie_word_embeddings", False)
        names = {name for name, _, _ in names_dtypes_shapes}

        def received() -> Iterator[tuple[str, torch.Tensor]]:
            for name, dtype, shape in names_dtypes_shapes:
                tensor = torch.empty(shape, dtype=dtype, device=self.device)
                self.weight_update_group.broadcast(tensor, src=0, stream=torch.cuda.current_stream() if on_gpu else None)
                yield name, tensor
                if tied and name == EMBEDDINGS and LM_HEAD not in names:
                    yield LM_HEAD, tensor  # the tied head is its own layer to vLLM (see rollout.with_tied_head)

        self.reload_weights(weights_iterator=received(), is_checkpoint_format=True)
        if on_gpu:
            torch.cuda.current_stream().synchronize()

    def update_weight(self, name: str, dtype: torch.dtype, shape: tuple) -> None:
        """Receive one tensor and load it with the model's `load_weights` (the interface of vLLM's example).

        Only for unquantized models on GPU, where vLLM keeps checkpoint layouts:
        the CPU backend repacks linear layers, and `reload_weights` cannot take a
        single tensor of a fused layer (q of qkv_proj) without clobbering the rest
        of the layer. `receive_weights` is the general path.
        """
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        self.weight_update_group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
        self.model_runner.model.load_weights(weights=[(name, tensor)])
