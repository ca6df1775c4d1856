"""Where built models live, and the key that names each build.

A model that rlcore builds itself (`tiny:<task>`, `sft:<task>`, the
self-rewarding seed) lives in `$RLCORE_CACHE` (else `~/.cache/rlcore`) in a
folder whose name hashes the build's settings *and the source of the code
that builds it*, so changed build code never silently reuses an old
checkpoint. This module imports nothing of rlcore: it only reads files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

TINY_PREFIX = "tiny:"
SFT_PREFIX = "sft:"

PACKAGE = Path(__file__).resolve().parents[1]
"""The `rlcore` package folder; build-code paths below are relative to it."""

TINY_BUILD_CODE = ("models/tiny.py", "data/tasks")
"""Source that builds a `tiny:` model: its architecture, tokenizer and the task corpus."""
SFT_BUILD_CODE = (*TINY_BUILD_CODE, "models/sft.py", "models/loading.py", "core/training.py", "core/batch.py")
"""Source that builds an `sft:` warm start (its settings are SFTConfig's defaults, inside models/sft.py)."""


def cache_dir() -> Path:
    """Where built models live: $RLCORE_CACHE, else ~/.cache/rlcore."""
    return Path(os.environ.get("RLCORE_CACHE", Path.home() / ".cache" / "rlcore"))


def code_hash(paths: Sequence[str | Path]) -> str:
    """sha1 of the named source files (a folder stands for its *.py files), each with its relative name."""
    digest = hashlib.sha1()
    for path in paths:
        path = Path(path) if Path(path).is_absolute() else PACKAGE / path
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(PACKAGE) if file.is_relative_to(PACKAGE) else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def build_key(settings: dict, code: Sequence[str | Path]) -> str:
    """A short key for one build: its settings (JSON) and the hash of the code that builds it."""
    text = json.dumps(settings, sort_keys=True, default=str) + code_hash(code)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def sft_folder(task: str) -> Path:
    """The cache folder of `sft:<task>`: SFTConfig's defaults on `tiny:<task>`, keyed by the build code."""
    key = build_key({"name": SFT_PREFIX + task}, SFT_BUILD_CODE)
    return cache_dir() / "sft" / f"sft-{task}-{key}"


def is_built(folder: Path) -> bool:
    """A build is complete once its folder holds config.json (builds write elsewhere, then rename)."""
    return (folder / "config.json").exists()
