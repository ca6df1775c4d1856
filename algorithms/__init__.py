"""Algorithms: one file each, a `Config` dataclass and `train(config) -> dict` that reads like its paper's loop.

May import `actors` and `rlcore`; nothing here imports `launch`. `ALGORITHMS`
maps the `algorithm:` key of a config file to its module; the CLI and
`rlcore submit` both read it here. `self_rewarding_seed` is not an algorithm:
it builds self-rewarding's seed model M0 and its data.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHMS = {
    "ppo": "algorithms.ppo",
    "rrhf": "algorithms.rrhf",
    "self_rewarding": "algorithms.self_rewarding",
    "sft": "rlcore.models.sft",
}
"""Algorithm name -> module with a `Config` dataclass and `train(config) -> dict`."""


def algorithm_module(name: object, where: str = "config") -> ModuleType:
    """The module of algorithm `name`; a ValueError naming the choices when there is none."""
    if name not in ALGORITHMS:
        raise ValueError(f"{where}: 'algorithm' is {name!r}; choose one of {sorted(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])
