"""rlcore.core.usage: busy seconds, calls and Batch tokens counted where the work runs; ActorGroup.usage reads them."""

import sys
import time

import pytest
import ray
import torch

from actors.driver import usage_metrics
from rlcore.core import usage
from rlcore.core.batch import make_batch
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup, gather

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Worker travels to the actors by value

def tiny_batch(response_lengths: list[int]):
    return make_batch(prompt_ids=[[1, 2]] * len(response_lengths),
                      response_ids=[[5] * n for n in response_lengths], pad_token_id=0)


class Worker:
    """Stands in for an actor: `outer` calls `inner`, both counted; `generate` returns a Batch."""

    @usage.busy
    def inner(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @usage.busy
    def outer(self, seconds: float) -> float:
        return self.inner(seconds) + self.inner(seconds)

    @usage.busy
    def generate(self, lengths: list[int]):
        return tiny_batch(lengths)

    @usage.busy
    def train_step(self, batch, scale: float = 1.0) -> float:
        return float(batch.response_mask.sum()) * scale

    @usage.busy
    def fail(self) -> None:
        raise ValueError("boom")

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture(autouse=True)
def fresh_counters():
    usage.reset()
    yield
    usage.reset()


def test_busy_counts_wall_time_once_for_nested_calls():
    """outer() sleeps 2 x 0.05 s inside inner(): busy 0.1 s, one call (the nested ones are not counted again)."""
    worker = Worker()
    assert worker.outer(0.05) == 0.1
    worker.idle(0.1)  # undecorated: not busy
    stats = usage.snapshot()
    assert 0.1 <= stats["busy_s"] < 0.18
    assert 0 <= stats["busy_cpu_s"] < 0.05  # sleeping costs no CPU
    assert stats["calls"] == 1 and list(stats["methods"]) == ["outer"]
    worker.inner(0.02)
    stats = usage.snapshot()
    assert stats["calls"] == 2 and stats["methods"]["inner"]["calls"] == 1


def test_tokens_in_and_out_are_response_tokens_of_batches():
    """generate([3, 1]) returns 3 + 1 = 4 response tokens; train_step on a batch of [2, 2, 1] reads 5."""
    worker = Worker()
    worker.generate([3, 1])
    worker.train_step(tiny_batch([2, 2, 1]), scale=2.0)
    worker.train_step(batch=tiny_batch([1]))  # a Batch given by keyword counts too
    methods = usage.snapshot()["methods"]
    assert methods["generate"]["tokens_out"] == 4 and methods["generate"]["tokens_in"] == 0
    assert methods["train_step"]["tokens_in"] == 6 and methods["train_step"]["tokens_out"] == 0
    assert methods["train_step"]["calls"] == 2


def test_failed_calls_are_counted_and_reraised():
    worker = Worker()
    with pytest.raises(ValueError, match="boom"):
        worker.fail()
    assert usage.snapshot()["methods"]["fail"]["calls"] == 1
    worker.inner(0.0)  # the failure left no "inside" state behind: this call counts
    assert usage.snapshot()["methods"]["inner"]["calls"] == 1


def test_snapshot_fields_and_decorated_methods_keep_their_names():
    stats = usage.snapshot()
    assert set(stats) == {"busy_s", "busy_cpu_s", "cpu_s", "peak_rss_mb", "gpu_peak_mb", "calls", "methods",
                          "intervals"}
    assert stats["peak_rss_mb"] > 10 and stats["cpu_s"] > 0
    assert stats["gpu_peak_mb"] == (torch.cuda.max_memory_allocated() / 1024**2
                                    if torch.cuda.is_available() and torch.cuda.is_initialized() else 0.0)
    assert Worker.generate.__name__ == "generate" and Worker.train_step.__doc__ is None


def test_actor_group_usage_is_measured_inside_each_replica():
    """Two replicas: rank 0 is busy 0.2 s, rank 1 0.05 s plus 0.2 s in an undecorated method; the driver's own
    counters stay at zero (the work ran in the actors' processes). `usage_metrics` sums them per role."""
    init_ray(num_cpus=2)
    try:
        group = ActorGroup(Worker, num_workers=2, num_cpus=0.5)
        gather([group.actors[0].inner.remote(0.2), group.actors[1].inner.remote(0.05),
                group.actors[1].idle.remote(0.2)])
        gather(group.map(Worker.generate, [4, 4]))
        rank0, rank1 = group.usage()
        assert 0.2 <= rank0["busy_s"] < 0.5 and 0.05 <= rank1["busy_s"] < 0.2, (rank0, rank1)
        assert rank0["methods"]["generate"]["tokens_out"] == 8 and rank0["calls"] == 2
        assert rank0["peak_rss_mb"] > 10
        assert len(rank0["intervals"]) == 2 and all(end > start for start, end in rank0["intervals"])
        assert usage.snapshot()["calls"] == 0
        metrics = usage_metrics({"rollout": group, "none": ActorGroup(Worker, 0)})  # empty groups are left out
        assert metrics["usage/rollout/busy_s"] == pytest.approx(rank0["busy_s"] + rank1["busy_s"], abs=0.05)
        assert metrics["usage/busy_s"] == metrics["usage/rollout/busy_s"] and metrics["usage/rollout/replicas"] == 2
        assert metrics["usage/rollout/tokens_generated"] == 16 and metrics["usage/rollout/tokens_trained"] == 0
        largest = max(rank0["peak_rss_mb"], rank1["peak_rss_mb"])  # peak RSS can only grow between two snapshots
        assert largest <= metrics["usage/rollout/peak_rss_mb"] < largest + 16
        assert not any(key.startswith("usage/none/") for key in metrics)
        group.kill()
    finally:
        ray.shutdown()


def test_overlap_share_is_the_busy_time_others_cover():
    assert usage.overlap_share([(0, 4)], [(1, 2), (1.5, 3)]) == pytest.approx(0.5)  # others cover 1..3
    assert usage.overlap_share([(0, 1), (2, 3)], [(0.5, 2.5)]) == pytest.approx(0.5)
    assert usage.overlap_share([(0, 2)], [(-1, 5)]) == 1.0 and usage.overlap_share([(0, 1)], [(1, 2)]) == 0.0
    assert usage.overlap_share([], [(0, 1)]) == 0.0
    assert usage.overlap_share([(0, 1), (0, 1)], [(0, 0.5)]) == pytest.approx(0.5)  # repeats count once
