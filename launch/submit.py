"""`rlcore submit`: run a training (or bench) config as a Ray job on a running cluster (a thin wrapper over
`ray job submit`).

    rlcore submit CONFIG.yaml [key=value ...] [--address URL] [--no-wait] [--python PATH] [--env KEY=VALUE ...]

What it runs is the plain command it prints first, which works by hand too:

    ray job submit --address URL --submission-id rlcore-sft-... --working-dir REPO \\
        --runtime-env-json '{"excludes": [...]}' -- python -m launch.cli train CONFIG key=value ...

- The working dir is the repo (uploaded with the job; .venv, .git, runs and wandb left out), so
  CONFIG must lie inside it and is passed relative to it.
- The entrypoint runs on the head node with `--python` (default `python`: on a cluster from
  cluster.yaml, the node's ~/venv python with the project installed; for a local head started from
  this repo's venv, pass that venv's python).
- `--address`: the job server (the dashboard, port 8265); default RAY_API_SERVER_ADDRESS, then
  RAY_ADDRESS, then http://127.0.0.1:8265 (e.g. through `ray dashboard cluster.yaml`).
- By default it follows the job's logs until it ends and exits 1 unless it SUCCEEDED;
  `--no-wait` returns as soon as the job is accepted.
- A bench config (`algorithms: [...]`, no `algorithm:` key; launch/configs/bench_tiny.yaml) runs
  `python -m launch.cli bench CONFIG ...` instead: `rlcore submit launch/configs/bench_tiny.yaml
  model=Qwen/Qwen2.5-0.5B-Instruct --address ...`.

The config is loaded here first, so a bad key fails at once instead of on the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from algorithms import algorithm_module
from rlcore.core.config import ConfigError, load_config, read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The working dir jobs run in by default: the folder holding launch/, rlcore/, actors/ and algorithms/."""

UPLOAD_EXCLUDES = [".venv", ".git", "runs", "wandb", ".cache", "**/__pycache__", "*.egg-info", ".pytest_cache"]
"""Left out of the uploaded working dir (Ray also honours .gitignore)."""

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def default_address() -> str:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def ray_executable() -> str:
    """The `ray` next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def config_in_working_dir(config: str, working_dir: Path) -> str:
    """`config` as a path relative to `working_dir` (where the job will find it); it must exist and lie inside."""
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file {config} not found")
    try:
        return path.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"config {config} is outside the working dir {working_dir}, which is what the job "
                          "uploads; copy it there or pass --working-dir") from None


def check_config(config: str, overrides: list[str]) -> str:
    """Load the config the way `rlcore train` (or `rlcore bench`) will, so a bad key fails here; returns the
    algorithm's name, or "bench" for a bench config."""
    raw = read_yaml(config)
    if "algorithm" not in raw and "algorithms" in raw:
        from launch.bench import BenchConfig

        load_config(BenchConfig, config, overrides)
        return "bench"
    algorithm = raw.get("algorithm")
    try:
        module = algorithm_module(algorithm, where=config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    load_config(module.Config, config, overrides, ignore=("algorithm",))
    return algorithm


def submit_command(
    config: str,
    overrides: list[str],
    address: str,
    submission_id: str,
    python: str = "python",
    working_dir: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    no_wait: bool = False,
    cli_command: str = "train",
) -> list[str]:
    """The `ray job submit` command line that runs `python -m launch.cli <cli_command> CONFIG overrides` as a
    job (cli_command: train or bench)."""
    runtime_env: dict = {"excludes": UPLOAD_EXCLUDES}
    if env:
        runtime_env["env_vars"] = dict(env)
    command = [
        ray_executable(), "job", "submit",
        "--address", address,
        "--submission-id", submission_id,
        "--working-dir", str(working_dir),
        "--runtime-env-json", json.dumps(runtime_env),
    ]
    if no_wait:
        command.append("--no-wait")
    return command + ["--", python, "-m", "launch.cli", cli_command, config, *overrides]


def job_status(address: str, submission_id: str) -> str:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(submission_id).value)


def submit(
    config: str,
    overrides: list[str] = (),
    address: str | None = None,
    python: str = "python",
    working_dir: str | Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    no_wait: bool = False,
    submission_id: str | None = None,
) -> dict:
    """Submit `config` as a Ray job; follow it to the end unless `no_wait`. Returns id, address, status, command."""
    overrides = list(overrides)
    working_dir = Path(working_dir).resolve()
    algorithm = check_config(config, overrides)
    address = address or default_address()
    submission_id = submission_id or f"rlcore-{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    command = submit_command(config_in_working_dir(config, working_dir), overrides, address, submission_id,
                             python, working_dir, env, no_wait, "bench" if algorithm == "bench" else "train")
    print("+ " + shlex.join(command), flush=True)
    returncode = subprocess.run(command, cwd=working_dir).returncode
    try:
        status = job_status(address, submission_id)
    except Exception as err:  # the job server never accepted it (bad address, auth, ...)
        raise SystemExit(f"rlcore submit: `ray job submit` exited {returncode}; no job {submission_id} at "
                         f"{address} ({err})") from None
    return {"submission_id": submission_id, "address": address, "status": status, "algorithm": algorithm,
            "logs": f"ray job logs --address {address} {submission_id}", "command": command}


def cmd_submit(args: list[str]) -> dict:
    """`rlcore submit ...` (see the module docstring). Exits 1 if a followed job did not succeed."""
    parser = argparse.ArgumentParser(prog="rlcore submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config inside the working dir")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--address", default=None, help=f"job server URL (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    parser.add_argument("--no-wait", action="store_true", help="return once the job is accepted")
    parser.add_argument("--python", default="python", help="the Python that runs the job on the cluster")
    parser.add_argument("--working-dir", default=str(REPO_ROOT), help="uploaded as the job's working dir")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var for the job")
    parser.add_argument("--submission-id", default=None, help="job id (default: rlcore-<algorithm>-<time>-<hex>)")
    ns = parser.parse_intermixed_args(args)
    bad = [item for item in ns.env if "=" not in item]
    if bad:
        raise ConfigError(f"--env wants KEY=VALUE, got {bad}")
    result = submit(ns.config, ns.overrides, ns.address, ns.python, ns.working_dir,
                    dict(item.split("=", 1) for item in ns.env), ns.no_wait, ns.submission_id)
    if not ns.no_wait and result["status"] != "SUCCEEDED":
        print(json.dumps(result, indent=2), flush=True)
        raise SystemExit(f"rlcore submit: job {result['submission_id']} ended {result['status']}; "
                         f"see `{result['logs']}`")
    return result

