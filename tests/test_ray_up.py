"""`ray up launch/cluster_local.yaml` → `rlcore submit` a tiny job → SUCCEEDED → `ray down`, over ssh to 127.0.0.1.

Opt-in: runs only with RLCORE_TEST_RAY_UP=1, because it needs an ssh server on 127.0.0.1:22 that
accepts key login, rsync, and `ray` on the PATH of that user's login shell. Settings:

    RLCORE_RAY_UP_USER   ssh user (default root)
    RLCORE_RAY_UP_KEY    private key for it (default: ssh's own defaults)

`ray down` runs a bare `ray stop` on the head, which here is this machine: it stops every Ray
process the ssh session can see. So that other programs' Ray instances survive, run sshd in its
own PID namespace; processes started through it then live in that namespace, and `ray stop` there
sees only them. One way (as root, after `apt-get install openssh-server rsync`):

    D=/tmp/rlc-sshd; mkdir -p $D /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f $D/host_ed25519; ssh-keygen -q -t ed25519 -N '' -f $D/id_ed25519
    cp $D/id_ed25519.pub $D/authorized_keys
    printf '%s\\n' "ListenAddress 127.0.0.1" "HostKey $D/host_ed25519" "AuthorizedKeysFile $D/authorized_keys" \\
        "PermitRootLogin prohibit-password" "PasswordAuthentication no" "StrictModes no" "UsePAM no" > $D/sshd_config
    { cat ~/.bashrc; echo "export PATH=$PWD/.venv/bin:\\$PATH RAY_AUTH_MODE=disabled"; } > $D/bashrc
    setsid unshare --pid --fork --mount-proc --mount \\
        sh -c "mount --bind $D/bashrc ~/.bashrc && exec /usr/sbin/sshd -D -f $D/sshd_config" &
    RLCORE_TEST_RAY_UP=1 RLCORE_RAY_UP_KEY=$D/id_ed25519 .venv/bin/python -m pytest -s tests/test_ray_up.py

(the bind mount, private to that mount namespace, puts the venv on the ssh login PATH without
touching ~/.bashrc). If the ssh session shares this process's PID namespace while other Ray
processes run here, the test skips rather than let `ray down` kill them.

The cluster is launch/cluster_local.yaml with a unique name, the key, and extra `ray start` flags
(appended; the last occurrence of a flag wins) giving the head free ports and its own --temp-dir;
the file's own `ray stop` before `ray start` is dropped for the same reason as above.
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
import yaml

from rlcore.runtime.rendezvous import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
USER = os.environ.get("RLCORE_RAY_UP_USER", "root")
KEY = os.environ.get("RLCORE_RAY_UP_KEY")

pytestmark = pytest.mark.skipif(os.environ.get("RLCORE_TEST_RAY_UP") != "1",
                                reason="needs sshd on 127.0.0.1 with key login; set RLCORE_TEST_RAY_UP=1")


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def ssh(command: str) -> subprocess.CompletedProcess:
    """`command` in a login shell on 127.0.0.1, the way Ray's command runner runs it."""
    key = ["-i", KEY] if KEY else []
    return subprocess.run(
        ["ssh", *key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=10", f"{USER}@127.0.0.1", f"bash --login -c -i 'source ~/.bashrc; {command}'"],
        capture_output=True, text=True, timeout=60)


def ray_processes() -> list[psutil.Process]:
    """Live GCS servers and raylets on this machine (any PID namespace below this one)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["name"] in ("gcs_server", "raylet"):
            found.append(proc)
    return found


def cluster_config(name: str, temp_dir: str, ports: dict[str, int]) -> dict:
    config = yaml.safe_load((ROOT / "launch" / "cluster_local.yaml").read_text())
    config["cluster_name"] = name
    config["auth"] = {"ssh_user": USER, **({"ssh_private_key": KEY} if KEY else {})}
    flags = " ".join([f"--{flag}={port}" for flag, port in ports.items()]
                     + [f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats"])
    config["head_start_ray_commands"] = [
        f"{command} {flags}" for command in config["head_start_ray_commands"] if command.strip() != "ray stop"
    ]
    return config


@pytest.fixture(scope="module")
def local_cluster():
    """`ray up` a one-node cluster from launch/cluster_local.yaml; `ray down` at the end. Yields (config, ports)."""
    check = ssh("command -v ray && readlink /proc/self/ns/pid")
    if check.returncode != 0:
        pytest.fail(f"cannot run `ray` over ssh {USER}@127.0.0.1 (see this module's docstring): {check.stderr[-500:]}")
    shared_namespace = check.stdout.split()[-1] == os.readlink("/proc/self/ns/pid")
    if shared_namespace and ray_processes():
        pytest.skip(f"`ray down` would run `ray stop` here and kill {len(ray_processes())} Ray processes that are "
                    "not this test's; run sshd in its own PID namespace (see this module's docstring)")

    name = f"rlcore-test-{os.getpid()}"
    temp_dir = tempfile.mkdtemp(prefix="rlc-up-", dir="/tmp")
    ports = {flag: free_port() for flag in ("port", "dashboard-port", "ray-client-server-port",
                                             "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                             "metrics-export-port", "runtime-env-agent-port")}
    path = Path(temp_dir) / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster_config(name, temp_dir, ports), sort_keys=False))
    launcher_files = [Path("/tmp/ray") / f"cluster-{name}.{suffix}" for suffix in ("state", "lock")]
    bootstrap = [Path.home() / f for f in ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem")]
    preexisting = {p for p in bootstrap if p.exists()}
    try:
        start = time.time()
        up = subprocess.run([RAY, "up", "-y", "--no-config-cache", str(path)], env=cli_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
        print(f"ray up: exit {up.returncode} in {time.time() - start:.0f} s")
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield path, ports
    finally:
        start = time.time()
        down = subprocess.run([RAY, "down", "-y", str(path)], env=cli_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        print(f"ray down: exit {down.returncode} in {time.time() - start:.0f} s")
        left = [proc for proc in ray_processes() if temp_dir in " ".join(proc.cmdline())]
        for leftover in launcher_files + sorted(set(bootstrap) - preexisting):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        assert not left, f"head processes left after ray down: {[p.pid for p in left]}"


def test_ray_up_submit_and_down(local_cluster, tmp_path):
    path, ports = local_cluster
    # the head advertises the custom resources quoted in cluster_local.yaml
    probe = subprocess.run(
        [sys.executable, "-c", "import json, ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
         "print(json.dumps(ray.cluster_resources()))" % ports["port"]],
        env=cli_env(), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    resources = json.loads(probe.stdout.strip().splitlines()[-1])
    assert resources.get("rollout") == 2 and resources.get("learner") == 1, resources

    checkpoint = tmp_path / "sft"
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "submit", "launch/configs/sft_tiny.yaml", "max_steps=5", "eval_every=5",
         "eval_size=16", "batch_size=32", f"output_dir={checkpoint}",
         "--address", f"http://127.0.0.1:{ports['dashboard-port']}", "--python", sys.executable],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    result = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))
    print(f"rlcore submit: job {result['submission_id']} {result['status']} in {time.time() - start:.0f} s")
    assert result["status"] == "SUCCEEDED"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
