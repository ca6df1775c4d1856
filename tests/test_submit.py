"""`rlcore submit` against a real Ray head with a job server, started by this module and stopped by it alone.

The head runs `ray start --head` with its own ports and `--temp-dir`, in a new session
(`start_new_session=True`): every process it starts (GCS, raylet, dashboard, job supervisor, workers)
keeps that session id, even those that make their own process group. Teardown signals exactly the
processes of that session. A bare `ray stop` would kill every Ray process on the machine, including
other programs' clusters, so it is never used here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from launch.submit import UPLOAD_EXCLUDES, check_config, submit_command
from rlcore.core.config import ConfigError
from rlcore.runtime.rendezvous import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TINY_JOB = ["launch/configs/sft_tiny.yaml", "max_steps=5", "eval_every=5", "eval_size=16", "batch_size=32"]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            pass
    return found


def stop_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every live process of session `sid` (this head's, nobody else's)."""
    procs = session_processes(sid)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head():
    """A private head with a dashboard (the job server); yields its http address."""
    temp_dir = tempfile.mkdtemp(prefix="rlc-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    dashboard_port = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dashboard_port, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
    }
    command = [RAY, "start", "--head", "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())]
    start = subprocess.Popen(command, env=cli_env(), start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    sid = start.pid  # the session leader: every process of this head carries its id
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        start.kill()
        stop_session(sid)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not session_processes(sid)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def printed_result(stdout: str) -> dict:
    """The JSON object the CLI prints last (after the job's streamed logs)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def test_submit_follows_a_training_job_to_success(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    checkpoint = tmp_path / "sft"
    done = run_cli("submit", *TINY_JOB, f"output_dir={checkpoint}", "--address", ray_head, "--python", sys.executable)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = printed_result(done.stdout)
    assert result["status"] == "SUCCEEDED" and result["address"] == ray_head
    assert result["command"][-len(TINY_JOB) - 5 :] == [sys.executable, "-m", "launch.cli", "train", *TINY_JOB,
                                                        f"output_dir={checkpoint}"]
    # the job wrote its checkpoint and reported its metrics
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    logs = JobSubmissionClient(ray_head).get_job_logs(result["submission_id"])
    metrics = printed_result(logs)
    assert metrics["steps"] == 5 and metrics["path"] == str(checkpoint)
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_no_wait_returns_at_once_and_a_failing_job_is_reported(ray_head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    done = run_cli("submit", *TINY_JOB, "--address", ray_head, "--no-wait", "--python", "/nonexistent/python")
    assert done.returncode == 0, done.stderr[-3000:]
    result = printed_result(done.stdout)
    assert result["status"] in ("PENDING", "RUNNING", "FAILED")
    client = JobSubmissionClient(ray_head)
    deadline = time.time() + 300
    while client.get_job_status(result["submission_id"]) not in (JobStatus.FAILED, JobStatus.SUCCEEDED):
        assert time.time() < deadline, "job did not end"
        time.sleep(1)
    assert client.get_job_status(result["submission_id"]) == JobStatus.FAILED  # no such python on the head


def test_a_bad_override_fails_before_submitting():
    done = run_cli("submit", "launch/configs/sft_tiny.yaml", "no_such_key=1", "--address", "http://127.0.0.1:9")
    assert done.returncode == 2 and "no_such_key" in done.stderr and "ray job submit" not in done.stdout


def test_submit_command_line(tmp_path):
    command = submit_command("launch/configs/sft_tiny.yaml", ["max_steps=5"], "http://head:8265", "job-1",
                             python="/opt/venv/bin/python", working_dir=ROOT, env={"HF_TOKEN": "x"})
    split = command.index("--")
    assert command[split + 1 :] == ["/opt/venv/bin/python", "-m", "launch.cli", "train", "launch/configs/sft_tiny.yaml",
                                    "max_steps=5"]
    options = dict(zip(command[3:split:2], command[4:split:2]))
    assert options["--address"] == "http://head:8265" and options["--working-dir"] == str(ROOT)
    runtime_env = json.loads(options["--runtime-env-json"])
    assert runtime_env == {"excludes": UPLOAD_EXCLUDES, "env_vars": {"HF_TOKEN": "x"}}
    assert ".venv" in UPLOAD_EXCLUDES and "--no-wait" not in command


def test_a_bench_config_is_submitted_as_a_bench():
    assert check_config("launch/configs/bench_tiny.yaml", ["seeds=[0]", "model=Qwen/Qwen2.5-0.5B-Instruct"]) == "bench"
    with pytest.raises(ConfigError, match="no_such_key"):
        check_config("launch/configs/bench_tiny.yaml", ["no_such_key=1"])
    command = submit_command("launch/configs/bench_tiny.yaml", ["seeds=[0]"], "http://head:8265", "job-2",
                             cli_command="bench")
    assert command[command.index("--") + 1 :] == ["python", "-m", "launch.cli", "bench",
                                                  "launch/configs/bench_tiny.yaml", "seeds=[0]"]
