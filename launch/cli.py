"""The `rlcore` command.

    rlcore train CONFIG.yaml [key.sub=value ...]   run the algorithm the file names (`algorithm: ppo`)
    rlcore sft [CONFIG.yaml] [key=value ...]       supervised warm start on a task
    rlcore build NAME ...                          build tiny:<task> / sft:<task> models into the cache
    rlcore submit CONFIG.yaml [key=value ...]      run `rlcore train` as a Ray job on a cluster
    rlcore train-rm / train-themis / themis-eval   reward models (see launch/reward_cmds.py)
    rlcore bench [CONFIG.yaml]                     compare the algorithms' compute cost
    rlcore export RUN_DIR [--step N] [--out DIR]   the Hugging Face folder a run exported (final, or checkpoint N)
    rlcore task-data TASK OUT_DIR [--train N]       a built-in task as Parquet files of prompts and answers
    rlcore tiny-lm DATA OUT_DIR --keys K1,K2        a tiny model whose tokenizer is trained on your data's text
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from algorithms import ALGORITHMS, algorithm_module
from launch import bench, reward_cmds, submit, themis_eval
from rlcore.core import checkpoint
from rlcore.core.config import ConfigError, config_from_args, config_help, load_config, read_yaml
from rlcore.data.sources import read_texts, write_task_data
from rlcore.models import sft
from rlcore.models.build import build_model
from rlcore.models.tiny import TinyModelSpec, build_tiny_lm


def cmd_train(args: list[str]) -> dict:
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    if path is None:
        raise ConfigError("rlcore train needs a config file: rlcore train CONFIG.yaml [key=value ...]")
    try:
        module = algorithm_module(read_yaml(path).get("algorithm"), where=path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return module.train(load_config(module.Config, path, overrides, ignore=("algorithm",)))


def cmd_sft(args: list[str]) -> dict:
    return sft.train(config_from_args(sft.Config, args))


def cmd_build(args: list[str]) -> dict:
    """`rlcore build NAME ...`: build `tiny:<task>` / `sft:<task>` models into the cache (once)."""
    if not args:
        raise ConfigError("rlcore build needs model names: rlcore build sft:arithmetic [tiny:calendar ...]")
    return {name: build_model(name) for name in args}


def cmd_export(args: list[str]) -> dict:
    """`rlcore export RUN_DIR [--step N] [--out DIR]`: the Hugging Face folder (safetensors, config, tokenizer,
    generation config; a LoRA run's adapter under adapter/) that a run wrote at its end, <RUN_DIR>/final, or
    with --step N at its checkpoint N, <RUN_DIR>/checkpoints/step_N/hf. Every run writes these itself;
    this command finds one (and copies it to DIR with --out), it converts no DeepSpeed shards. Load it with
    `AutoModelForCausalLM.from_pretrained(FOLDER)` or `vllm serve FOLDER`."""
    parser = argparse.ArgumentParser(prog="rlcore export", usage="rlcore export RUN_DIR [--step N] [--out DIR]")
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int)
    parser.add_argument("--out")
    ns = parser.parse_args(args)
    folder = checkpoint.exported_model(ns.run_dir, ns.step)
    if ns.out:
        folder = shutil.copytree(folder, ns.out)
    return {"model_path": str(folder)}


def cmd_task_data(args: list[str]) -> dict:
    """`rlcore task-data TASK OUT_DIR [--train N] [--heldout N] [--seed S]`: a built-in task's train and
    held-out prompts with their reference answers, as OUT_DIR/train.parquet and OUT_DIR/heldout.parquet
    (columns prompt, answer, chosen, rejected): your-own-data files to try the `data` section and
    `reward.kind=reference` on (launch/configs/ppo_file_tiny.yaml)."""
    parser = argparse.ArgumentParser(prog="rlcore task-data", usage=cmd_task_data.__doc__.split(":")[0].strip("`"))
    parser.add_argument("task")
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=4096)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(args)
    return write_task_data(ns.task, ns.out_dir, ns.train, ns.heldout, ns.seed)


def cmd_tiny_lm(args: list[str]) -> dict:
    """`rlcore tiny-lm DATA OUT_DIR --keys K1,K2 [--vocab N] [--positions N] [--seed S]`: a random-initialised
    tiny Qwen2 LM (~1-2M parameters) with a byte-level BPE tokenizer trained on the text under the keys
    (dotted for nested objects, e.g. pos_answer.answer) of a local JSONL / JSON / Parquet / CSV file or saved
    dataset, saved to OUT_DIR as an ordinary model folder: a CPU stand-in for a real model on text the
    task's tiny tokenizers do not cover (launch/configs/rrhf_hh_tiny.yaml)."""
    parser = argparse.ArgumentParser(prog="rlcore tiny-lm", usage=cmd_tiny_lm.__doc__.split(":")[0].strip("`"))
    parser.add_argument("data")
    parser.add_argument("out_dir")
    parser.add_argument("--keys", required=True)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(args)
    texts = read_texts(ns.data, ns.keys.split(","))
    spec = TinyModelSpec(task=Path(ns.data).stem, vocab_size=ns.vocab, max_positions=ns.positions, seed=ns.seed)
    return {"model_path": str(build_tiny_lm(texts, spec, ns.out_dir)), "texts": len(texts)}


COMMANDS = {
    "train": cmd_train,
    "sft": cmd_sft,
    "build": cmd_build,
    "submit": submit.cmd_submit,  # run `rlcore train` as a Ray job on a cluster
    "train-rm": reward_cmds.cmd_train_rm,
    "train-themis": reward_cmds.cmd_train_themis,
    "themis-eval": themis_eval.cmd_themis_eval,
    "bench": bench.cmd_bench,  # the algorithms' compute cost
    "export": cmd_export,  # a run's trained model as a Hugging Face folder
    "task-data": cmd_task_data,  # a built-in task as Parquet files
    "tiny-lm": cmd_tiny_lm,  # a tiny model on your own text
}
CONFIGS = {
    "sft": lambda: sft.Config,
    "bench": lambda: bench.BenchConfig,
    "train-rm": lambda: reward_cmds.reward_model.RMConfig,
    "train-themis": lambda: reward_cmds.themis.ThemisConfig,
    "themis-eval": lambda: themis_eval.ThemisConfig,
}
"""Command -> its config dataclass, for `--help`."""
DOCSTRING_HELP = {"build": cmd_build, "export": cmd_export, "task-data": cmd_task_data, "tiny-lm": cmd_tiny_lm}
"""Commands without a config: `--help` prints the function's docstring."""


def command_help(command: str, args: list[str]) -> str:
    """`rlcore COMMAND [CONFIG.yaml | ALGORITHM] --help`: every config field with type, default and docstring."""
    usage = f"rlcore {command} [CONFIG.yaml] [key.sub=value ...]\n\nconfig fields (defaults; a YAML file and "
    usage += "dotted overrides change them):\n"
    if command == "themis-eval":
        usage = usage.replace("[key.sub=value ...]", "[key.sub=value ...] [variants=tools,no_rationale,plain] "
                                                     "[seeds=0,1]")
    if command in CONFIGS:
        return usage + config_help(CONFIGS[command]())
    names = [a for a in args if not a.startswith("-") and "=" not in a]
    if not names:
        return (f"rlcore train CONFIG.yaml [key.sub=value ...]\n\nThe file's `algorithm:` key picks one of "
                f"{sorted(ALGORITHMS)}; `rlcore train ALGORITHM --help` or `rlcore train CONFIG.yaml --help` lists "
                "that algorithm's config fields.")
    name = names[0] if names[0] in ALGORITHMS else read_yaml(names[0]).get("algorithm")
    try:
        module = algorithm_module(name, where=names[0])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return f"algorithm {name}: " + usage + config_help(module.Config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlcore", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="config file and key=value overrides")
    ns = parser.parse_args(argv)
    try:
        if ns.command != "submit" and {"-h", "--help"} & set(ns.args):
            print(command_help(ns.command, ns.args) if ns.command not in DOCSTRING_HELP
                  else DOCSTRING_HELP[ns.command].__doc__)
            return 0
        result = COMMANDS[ns.command](ns.args)
    except ConfigError as err:
        print(f"rlcore {ns.command}: config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"rlcore {ns.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
