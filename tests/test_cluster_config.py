"""cluster.yaml and launch/cluster_local.yaml pass Ray's own offline config preparation and validation.

`prepare_config` fills in the provider's defaults and per-node-type worker bounds (what `ray up`
does before it contacts a cloud); `validate_config` checks the result against Ray's JSON schema
and its cross-field rules. Broken copies must fail the same check.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
LOCAL = ROOT / "launch" / "cluster_local.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def check(config: dict) -> dict:
    """What `ray up` does offline: prepare (defaults), then validate. Returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cloud_cluster_validates_and_separates_roles():
    prepared = check(load(CLUSTER))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU") == 0  # no training work on the head
    assert head["max_workers"] == 0
    rollout = types["rollout_gpu"]
    assert rollout["resources"]["rollout"] >= 1
    assert 0 <= rollout["min_workers"] <= rollout["max_workers"] <= prepared["max_workers"]
    assert "learner" in types["learner_gpu"]["resources"] and "rollout" not in types["learner_gpu"]["resources"]
    assert sum(t["min_workers"] for t in types.values()) <= prepared["max_workers"]


def test_cloud_cluster_installs_torch_before_the_project():
    prepared = check(load(CLUSTER))
    commands = prepared["worker_setup_commands"]  # setup_commands merged in by prepare_config
    torch_at = next(i for i, c in enumerate(commands) if "torch==" in c)
    project_at = next(i for i, c in enumerate(commands) if 'pip install -q -e ".[gpu]"' in c)
    assert torch_at < project_at
    assert prepared["head_setup_commands"][: len(commands)] == commands
    assert "~/rlcore" in prepared["file_mounts"] and any("~/rlcore" in c for c in commands)


def test_local_cluster_validates():
    prepared = check(load(LOCAL))
    assert prepared["provider"]["head_ip"] == "127.0.0.1"
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--resources='{\"rollout\": 2, \"learner\": 1}'" in start  # quoted inside a block scalar
    assert "--resources='{\"rollout\": 2}'" in " ".join(prepared["worker_start_ray_commands"])


def _drop(key):
    def edit(config):
        del config[key]
    return edit


def _set(path, value):
    def edit(config):
        node = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


BROKEN = {
    "no provider": _drop("provider"),
    "max_workers is a string": _set(["max_workers"], "ten"),
    "rollout node without node_config": lambda c: c["available_node_types"]["rollout_gpu"].pop("node_config"),
    "fractional custom resource": _set(["available_node_types", "rollout_gpu", "resources"], {"rollout": 0.5}),
    "min_workers is a string": _set(["available_node_types", "rollout_gpu", "min_workers"], "1"),
    "head type not defined": _set(["head_node_type"], "ray.head.default"),
    "misspelt top-level key": _set(["setup_comands"], ["true"]),
    "min workers above the global max": _set(["max_workers"], 1),
    "setup_commands not a list": _set(["setup_commands"], "pip install -e ."),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_broken_copy_is_rejected(breakage, tmp_path):
    config = load(CLUSTER)
    BROKEN[breakage](config)
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError, TypeError)):
        check(load(broken))
