"""Building the models rlcore makes itself: an explicit, logged step, never a side effect of loading.

`build_model("sft:arithmetic")` builds `tiny:arithmetic` (tokenizer + random
init) and then its SFT warm start, once, into the cache folder that
`rlcore.models.cache` keys by settings and build code. Algorithms call it in
the driver before they start their actors; `rlcore build NAME` calls it from
the shell. Any other name (a folder, a Hugging Face name) passes through.
"""

from __future__ import annotations

import os
import shutil
import time

from filelock import FileLock

from rlcore.models.cache import SFT_PREFIX, TINY_PREFIX, is_built, sft_folder
from rlcore.models.loading import resolve_model
from rlcore.models.sft import SFTConfig, train_sft
from rlcore.models.tiny import TinyModelSpec, build_tiny_model


def build_model(name: str) -> str:
    """The loadable path of `name`, building a `tiny:` / `sft:` model into the cache first if needed."""
    if name.startswith(TINY_PREFIX):
        return str(build_tiny_model(TinyModelSpec(task=name[len(TINY_PREFIX) :])))
    if not name.startswith(SFT_PREFIX):
        return name
    task = name[len(SFT_PREFIX) :]
    folder = sft_folder(task)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not is_built(folder):
            base = build_model(TINY_PREFIX + task)
            print(f"building {name}: SFT warm start of {TINY_PREFIX + task} ({base}) -> {folder}", flush=True)
            start = time.time()
            partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
            result = train_sft(SFTConfig(model=TINY_PREFIX + task, task=task), partial)
            if folder.exists():
                shutil.rmtree(folder)
            partial.rename(folder)
            print(f"built {name}: held-out accuracy {result.accuracy:.1%} after {result.steps} steps "
                  f"in {time.time() - start:.0f} s", flush=True)
    return resolve_model(name)


def build_models(*names: str) -> None:
    """Build every `tiny:` / `sft:` model among `names` (empty names are skipped)."""
    for name in names:
        if name:
            build_model(name)
