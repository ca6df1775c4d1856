"""Red team: each attack on the code sandbox is contained, and the test checks its effect on the world.

Every attack runs twice: with the child's Python guards (what `code_run` runs) and without them
(`python_guards=False`), which shows that the kernel's walls (bubblewrap's namespaces and the seccomp
filter) hold on their own, as they must when candidate code gets around the guards. The effect is
checked outside the sandbox: a marker file the attack would create, a file it would change, a secret
it would print, a connection a listening socket would accept, a process it would kill or leave behind.
"""

import errno
import hashlib
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlcore.rewards.tools.sandbox import SandboxLimits, run_tests

# Timers loose enough for a loaded 2-core machine; the attacks that must time out set tighter ones.
LIMITS = SandboxLimits(test_cpu_s=2.0, test_wall_s=4.0, cpu_s=6, wall_s=12.0, memory_mib=128, output_bytes=20_000,
                       file_bytes=1 << 20, tmp_bytes=4 << 20)
REPO = Path(__file__).resolve().parents[1]
EPERM = "[Errno 1] Operation not permitted"
both_layers = pytest.mark.parametrize("python_guards", [True, False], ids=["guarded", "kernel-only"])


def attack(code, tests=("pass",), python_guards=True, limits=LIMITS):
    started = time.monotonic()
    result = run_tests(code, list(tests), limits, python_guards=python_guards)
    assert time.monotonic() - started < 30
    return result


def everything_shown(result) -> str:
    """All text the sandbox returns, where a stolen secret would have to appear."""
    return "\n".join([result.stdout, result.stderr, *result.blocked, *result.limits_hit,
                      *(outcome.reason for outcome in result.outcomes)])


@pytest.fixture
def victim():
    """A process outside the sandbox, with a secret in its environment (/proc/PID/environ)."""
    secret = secrets.token_hex(16)
    process = subprocess.Popen(["sleep", "60"], env={"RED_TEAM_SECRET": secret})
    yield process, secret
    process.kill()
    process.wait()


# The known escape: subprocess's C fork_exec raises no audit event. The attack copies Popen's child
# start without its sys.audit call, so no Python guard sees a process being made.
QUIET_POPEN = """
import inspect, subprocess, sys, textwrap
{fresh}
source = textwrap.dedent(inspect.getsource(subprocess.Popen._execute_child)).replace("sys.audit(", "(lambda *a: 0)(")
namespace = dict(vars(subprocess), _fork_exec=_posixsubprocess.fork_exec)
exec(source, namespace)
class QuietPopen(subprocess.Popen):
    _execute_child = namespace["_execute_child"]
"""
# A fresh import of the C module gets its original functions back, past the guard that replaced them.
FRESH_MODULE = "sys.modules.pop('_posixsubprocess')\nimport _posixsubprocess"


@pytest.mark.parametrize(("python_guards", "fresh", "reason"), [
    (True, "import _posixsubprocess", "blocked: process creation (_posixsubprocess.fork_exec)"),
    (True, FRESH_MODULE, EPERM),
    (False, "import _posixsubprocess", EPERM),
], ids=["guarded", "guard-bypassed", "kernel-only"])
def test_posixsubprocess_fork_exec_starts_no_shell(tmp_path, python_guards, fresh, reason):
    """The escape found in review: before bubblewrap this started /bin/sh as root, and the marker appeared."""
    marker = tmp_path / "escaped"
    result = attack(QUIET_POPEN.format(fresh=fresh),
                    [f"QuietPopen(['/bin/sh', '-c', 'echo escaped > {marker}']).wait()"], python_guards)
    assert not marker.exists()
    assert result.outcomes[0].reason == reason


LIBC = "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
CTYPES_ATTACKS = {
    "system": ("assert libc.system(b'echo escaped > {marker}') != 0", "marker"),
    "fork": ("pid = libc.fork()\nif pid == 0:\n    print('FORKED CHILD', flush=True)\n    libc._exit(0)\n"
             "assert pid == -1 and ctypes.get_errno() == errno.EPERM", "stdout"),
    "execve": ("argv = (ctypes.c_char_p * 4)(b'python', b'-c', b'print(\"EXECUTED\")', None)\n"
               f"libc.execve({os.path.realpath(sys.executable).encode()!r}, argv, None)\n"
               "assert ctypes.get_errno() == errno.EPERM", "stdout"),
    "open-write": ("for path in (b'{marker}', b'{kept}'):\n"
                   "    fd = libc.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
                   "    assert fd == -1 or libc.write(fd, b'overwritten', 11) != 11\n"
                   "    assert ctypes.get_errno() == errno.ENOENT", "marker"),
    "socket-connect": ("import socket, struct\n"
                       "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
                       "assert fd == -1 and ctypes.get_errno() == errno.EPERM\n"
                       "address = struct.pack('=H', socket.AF_INET) + struct.pack('!H4s8x', {port}, bytes([127, 0, 0, 1]))\n"
                       "assert libc.connect(fd, address, len(address)) == -1", "connection"),
}


@both_layers
@pytest.mark.parametrize("name", sorted(CTYPES_ATTACKS))
def test_ctypes_calls_of_libc_are_contained(tmp_path, python_guards, name):
    marker, kept = tmp_path / "escaped", tmp_path / "kept.txt"
    kept.write_text("precious")
    body, effect = CTYPES_ATTACKS[name]
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        result = attack("import os\n" + LIBC, [body.format(marker=marker, kept=kept, port=port)], python_guards)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert not marker.exists() and kept.read_text() == "precious"
    assert "FORKED CHILD" not in result.stdout and "EXECUTED" not in result.stdout
    if python_guards:
        assert result.outcomes[0].reason == "blocked: loading native libraries (ctypes.dlopen)"
    else:  # the attack's own asserts saw each call refused by the kernel
        assert result.outcomes[0].passed, (effect, result.outcomes[0].reason)


# x86-64 system call numbers: (name, arguments, the errno the filter answers)
RAW_SYSCALLS = [
    ("fork", 57, (), errno.EPERM),
    ("vfork", 58, (), errno.EPERM),
    ("clone (a process)", 56, (int(signal.SIGCHLD), 0, 0, 0, 0), errno.EPERM),
    ("clone (new user namespace)", 56, (0x10000000 | 0x00010000 | 0x00000800 | 0x00000100, 0, 0, 0, 0), errno.EPERM),
    ("clone3", 435, (0, 0), errno.ENOSYS),
    ("execve", 59, (0, 0, 0), errno.EPERM),
    ("execveat", 322, (0, 0, 0, 0, 0), errno.EPERM),
    ("socket AF_INET", 41, (socket.AF_INET, socket.SOCK_STREAM, 0), errno.EPERM),
    ("socket AF_NETLINK", 41, (16, socket.SOCK_RAW, 0), errno.EPERM),
    ("ptrace", 101, (0, 0, 0, 0), errno.EPERM),
    ("unshare", 272, (0x10000000,), errno.EPERM),
    ("setns", 308, (0, 0), errno.EPERM),
    ("mount", 165, (0, 0, 0, 0, 0), errno.EPERM),
    ("bpf", 321, (0, 0, 0), errno.EPERM),
    ("io_uring_setup", 425, (1, 0), errno.EPERM),
    ("process_vm_readv", 310, (1, 0, 0, 0, 0, 0), errno.EPERM),
]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="system call numbers are x86-64's")
def test_raw_system_calls_through_ctypes_are_refused_by_the_kernel():
    """Without the Python guards, ctypes' syscall() reaches the kernel, whose filter answers."""
    tests = [f"result = libc.syscall({number}, *{tuple(map(int, arguments))!r})\n"
             "if result == 0:\n    print('SYSCALL SUCCEEDED', flush=True)\n    libc._exit(0)\n"
             f"assert (result, ctypes.get_errno()) == (-1, {expected}), (result, ctypes.get_errno())"
             for _, number, arguments, expected in RAW_SYSCALLS]
    tests.append("assert libc.syscall(41, 1, 1, 0) >= 0")  # AF_UNIX sockets stay allowed
    tests.append("import threading\nthread = threading.Thread(target=print, args=('THREAD',))\n"
                 "thread.start()\nthread.join()")  # and so do threads (clone with CLONE_THREAD)
    result = attack(LIBC, tests, python_guards=False)
    assert [(outcome.passed, outcome.reason) for outcome in result.outcomes] == [(True, "")] * len(tests)
    assert "SYSCALL SUCCEEDED" not in result.stdout and "THREAD" in result.stdout


PROCESS_ATTACKS = {
    "os.fork": "pid = os.fork()",
    "os.forkpty": "pid, fd = os.forkpty()",
    "pty.fork": "import pty\npid, fd = pty.fork()",
    "os.posix_spawn": "pid = os.posix_spawn('/bin/sh', ['sh', '-c', 'echo escaped > {marker}'], {{}})",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print, args=('FORKED CHILD',)).start()",
}


# Without the guards the pty attacks fail one step before fork: the sandbox has no pty devices.
KERNEL_REFUSALS = {"os.forkpty": "[Errno 2] No such file or directory", "pty.fork": "out of pty devices"}


@both_layers
@pytest.mark.parametrize("name", sorted(PROCESS_ATTACKS))
def test_process_creation_is_refused(tmp_path, python_guards, name):
    marker = tmp_path / "escaped"
    body = PROCESS_ATTACKS[name].format(marker=marker)
    result = attack("import os\n", [body + "\nif pid == 0:\n    print('FORKED CHILD', flush=True)\n    os._exit(0)"
                                    if "pid" in body else body], python_guards)
    assert not marker.exists() and "FORKED CHILD" not in result.stdout
    assert not result.outcomes[0].passed
    if python_guards:  # reported even where the library catches the refusal (pty.fork tries another way)
        assert any(blocked.startswith("process creation") for blocked in result.blocked), result.blocked
    else:
        assert result.outcomes[0].reason.startswith(KERNEL_REFUSALS.get(name, EPERM)), result.outcomes[0].reason


@both_layers
def test_signals_reach_no_process_outside(victim, python_guards):
    """kill, killpg and kill(-1) at the parent, the test process and a bystander: all still alive."""
    process, _ = victim
    targets = [process.pid, os.getpid(), os.getppid(), -1]
    code = ("import os, signal\nfor pid in " + repr(targets) + ":\n"
            "    for send in (os.kill, os.killpg):\n"
            "        try:\n            send(pid, signal.SIGKILL)\n"
            "        except OSError as error:\n            print(pid, error.errno)\n"
            "print('STILL HERE')\n")
    result = attack(code, ["pass"], python_guards)
    assert process.poll() is None  # the bystander lives; this test process obviously does too
    assert result.outcomes[0].passed and "STILL HERE" in result.stdout
    if python_guards:
        assert "signals to other processes (os.kill)" in result.blocked


TARA_CODE = REPO / "data" / "tara" / "code_train.jsonl"
"""TARA's code rows (the expected answers of code_run's tasks), vendored in the repository."""


@pytest.fixture
def secret_files(tmp_path, victim):
    """Secrets outside the private directory: a file in the host's temp dir, one inside the repository,
    a bystander's environment, and the TARA data."""
    secret = secrets.token_hex(16)
    host_file = tmp_path / "secret.txt"
    host_file.write_text(secret)
    repo_file = REPO / f".red-team-secret-{secret[:8]}.txt"
    repo_file.write_text(secret)
    process, environment_secret = victim
    readable = {str(host_file): secret, str(repo_file): secret,
                f"/proc/{process.pid}/environ": environment_secret, "/proc/1/environ": environment_secret,
                "/proc/self/environ": environment_secret}
    with TARA_CODE.open() as rows:
        readable[str(TARA_CODE)] = rows.readline()[:80]
    yield readable
    repo_file.unlink()


@both_layers
def test_files_outside_the_private_directory_cannot_be_read(secret_files, python_guards):
    tests = [f"print(open({path!r}).read())" for path in secret_files]
    tests += [f"print(os.listdir({os.path.dirname(path)!r}))" for path in secret_files]
    result = attack("import os\n", tests, python_guards)
    shown = everything_shown(result)
    for path, secret in secret_files.items():
        assert secret not in shown, path
    assert result.passed == 0
    if python_guards:
        assert all(outcome.reason.startswith("blocked: read outside the sandbox directory")
                   for outcome in result.outcomes)
    else:
        assert all(outcome.reason.startswith("[Errno 2] No such file or directory") for outcome in result.outcomes)


@both_layers
def test_symlink_and_hard_link_tricks_reach_nothing(tmp_path, secret_files, python_guards):
    host_secret, secret = next(iter(secret_files.items()))
    kept = tmp_path / "kept.txt"
    kept.write_text("precious")
    stdlib_file = Path(os.__file__).resolve()
    stdlib_before = hashlib.sha256(stdlib_file.read_bytes()).hexdigest()
    tests = [
        f"os.symlink({host_secret!r}, 'read_link')\nprint(open('read_link').read())",
        f"os.link({host_secret!r}, 'hard_link')\nprint(open('hard_link').read())",
        f"os.symlink({str(kept)!r}, 'write_link')\nopen('write_link', 'w').write('overwritten')",
        f"os.link({str(stdlib_file)!r}, 'stdlib_link')\nopen('stdlib_link', 'a').write('overwritten')",
        f"open({str(stdlib_file)!r}, 'a').write('overwritten')",
        f"open({str(stdlib_file.with_name('planted.py'))!r}, 'w').write('overwritten')",
        "os.symlink('/', 'root')\nprint(os.listdir('root/' + " + repr(str(REPO).lstrip("/")) + "))",
    ]
    result = attack("import os\n", tests, python_guards)
    assert kept.read_text() == "precious"
    assert hashlib.sha256(stdlib_file.read_bytes()).hexdigest() == stdlib_before
    assert not stdlib_file.with_name("planted.py").exists()
    assert secret not in everything_shown(result) and "rlcore" not in result.stdout
    assert result.passed == 0, [outcome.reason for outcome in result.outcomes]


@both_layers
def test_no_connection_reaches_the_host(tmp_path, python_guards):
    """TCP on 127.0.0.1 and ::1, UDP, and AF_UNIX sockets (allowed by the filter) at an abstract and a
    file-system address: the listeners accept nothing."""
    name = f"rlcore-red-team-{secrets.token_hex(4)}"
    path = str(tmp_path / "listener.sock")
    listeners = [socket.create_server(("127.0.0.1", 0)), socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
    listeners[1].bind("\0" + name)
    listeners[2].bind(path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        datagrams.bind(("127.0.0.1", 0))
        datagrams.setblocking(False)
        for listener in listeners:
            listener.listen()
            listener.setblocking(False)
        port, udp_port = listeners[0].getsockname()[1], datagrams.getsockname()[1]
        result = attack("import socket\n", [
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"socket.create_connection(('::1', {port}), timeout=1)",
            f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))",
            f"socket.socket(socket.AF_UNIX).connect({chr(0) + name!r})",
            f"socket.socket(socket.AF_UNIX).connect({path!r})",
        ], python_guards)
        for listener in listeners:
            with pytest.raises(BlockingIOError):
                listener.accept()
            listener.close()
        with pytest.raises(BlockingIOError):
            datagrams.recv(1)
    reasons = [outcome.reason for outcome in result.outcomes]
    if python_guards:
        assert all(reason.startswith("blocked: network") for reason in reasons), reasons
    else:  # AF_INET refused by seccomp; AF_UNIX allowed, but the abstract name is another network
        # namespace's and the path is not in the mount namespace
        assert reasons == [EPERM, EPERM, EPERM, "[Errno 111] Connection refused",
                           "[Errno 2] No such file or directory"]


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path("/proc", entry, "comm").read_text().strip() == name:
                found.append(int(entry))
        except OSError:
            pass
    return found


SET_NAME = "import ctypes\nctypes.CDLL(None).prctl(15, {name!r}.encode())\n"  # PR_SET_NAME


def attack_watched(code, limits):
    """Runs code that renames its process to a fresh name, watching the host's process list for that name
    meanwhile: whether it was seen (so the watch works) and whether it is left once run_tests returns."""
    name = f"rt{secrets.token_hex(5)}"
    seen = threading.Event()
    done = threading.Event()

    def watch():
        while not done.is_set():
            if _processes_named(name):
                seen.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = attack(SET_NAME.format(name=name) + code, python_guards=False, limits=limits)
    finally:
        done.set()
        watcher.join()
    return result, seen.is_set(), _processes_named(name)


def test_a_loop_that_swallows_every_timer_is_killed_with_nothing_left_behind():
    """The child ignores its per-test timers and spins; the hard limits end it."""
    spin = "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n"
    result, seen, left = attack_watched(spin, SandboxLimits(test_cpu_s=0.2, test_wall_s=0.5, cpu_s=1, wall_s=3.0))
    assert result.limits_hit[0] in ("CPU time limit of 1 s exceeded", "Timeout after 3.0 s (wall clock)")
    assert seen and left == []


def test_a_sleeping_child_is_killed_by_the_wall_clock_with_nothing_left_behind():
    """Sleeping uses no CPU, so only the wall clock ends it: the kill reaches into the PID namespace."""
    sleeper = "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass\n"
    result, seen, left = attack_watched(sleeper, SandboxLimits(test_cpu_s=0.2, test_wall_s=0.3, wall_s=2.5))
    assert result.limits_hit == ("Timeout after 2.5 s (wall clock)",)
    assert seen and left == []


@both_layers
def test_fork_bomb_makes_no_process(python_guards):
    bomb = ("import os\nmade = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n"
            "            print('FORKED CHILD', flush=True)\n            os._exit(0)\n        made += 1\n"
            "    except OSError:\n        pass\n")
    result = attack(bomb, python_guards=python_guards,
                    limits=SandboxLimits(test_cpu_s=0.3, test_wall_s=1.0, cpu_s=3, wall_s=8.0))
    assert "FORKED CHILD" not in result.stdout
    assert result.outcomes[0].reason.startswith("timed out after")


@both_layers
@pytest.mark.parametrize("bomb", [
    "x = bytearray(4 * 1024 ** 3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))",
    "import mmap\nmmap.mmap(-1, 4 * 1024 ** 3)",
    "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()",
])
def test_memory_bombs_hit_the_address_space_limit(python_guards, bomb):
    result = attack("", [bomb, "assert sum(range(10)) == 45"], python_guards)
    assert not result.outcomes[0].passed
    assert result.outcomes[0].reason in ("MemoryError (memory limit 128 MiB)", "[Errno 12] Cannot allocate memory",
                                         "can't start new thread")
    assert result.outcomes[1].passed  # the child survived, and this process too


@both_layers
def test_the_limits_cannot_be_raised(python_guards):
    """The child set its own rlimits, hard ones included; raising them needs CAP_SYS_RESOURCE, which it lacks."""
    tests = [f"import resource\nresource.setrlimit(resource.{name}, (resource.RLIM_INFINITY,) * 2)"
             for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE")]
    tests.append("import resource\nassert resource.getrlimit(resource.RLIMIT_AS) == (128 << 20, 128 << 20)")
    result = attack("", tests, python_guards)
    reasons = [outcome.reason for outcome in result.outcomes]
    refused = "blocked: changing resource limits (resource.setrlimit)" if python_guards else \
        "not allowed to raise maximum limit"
    assert reasons == [refused] * 3 + [""] and result.outcomes[3].passed


@both_layers
def test_huge_files_stop_at_the_file_and_directory_limits(python_guards):
    """One file past file_bytes (1 MiB) fails with EFBIG; many files stop at tmp_bytes (4 MiB), in memory
    of the child's own tmpfs, never on the host's disk."""
    name = f"huge-{secrets.token_hex(4)}"
    result = attack("import os\nchunk = b'x' * (256 * 1024)\n", [
        f"with open('{name}', 'wb') as file:\n    while True:\n        file.write(chunk)",
        "written = 0\ntry:\n    for index in range(1000):\n        with open(f'part{index}', 'wb') as file:\n"
        "            for _ in range(3):\n                written += file.write(chunk)\n"
        "except OSError as error:\n    print('stopped', error.errno, written)\n"
        "assert written <= 4 * 1024 ** 2, written",
    ], python_guards)
    assert result.outcomes[0].reason == "[Errno 27] File too large"
    assert result.outcomes[1].passed and f"stopped {errno.ENOSPC}" in result.stdout
    assert not any(path.name.startswith(name) for path in Path("/tmp").iterdir())


def test_the_child_is_unprivileged_and_alone():
    """uid 65534 that cannot become root, no capabilities (effective, permitted, inheritable or bounding), no new
    privileges, no chroot, its own hostname, and nothing of the host's file system
    but the interpreter's tree: not /proc, /sys, /run, /var, /home, the repository, the venv, or anything
    in the home directory (where pyenv may keep the interpreter itself)."""
    interpreter = os.path.realpath(sys._base_executable)
    absent = ["/proc", "/sys", "/run", "/var", "/home", "/etc/passwd", "/etc/shadow", str(REPO), sys.prefix]
    absent += sorted(str(entry) for entry in Path.home().iterdir() if not interpreter.startswith(f"{entry}/"))[:50]
    tests = [
        "assert (os.getuid(), os.getgid()) == (65534, 65534)",
        "try:\n    os.setuid(0)\nexcept OSError:\n    pass\nassert os.getuid() == 65534",  # 0 is not mapped
        "os.chroot('.')",
        "import ctypes, struct\nlibc = ctypes.CDLL(None)\nsets = ctypes.create_string_buffer(24)\n"
        "assert libc.capget(struct.pack('Ii', 0x20080522, 0), sets) == 0 and sets.raw == bytes(24)\n"
        "assert [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1] == []  # PR_CAPBSET_READ\n"
        "assert libc.prctl(39, 0, 0, 0, 0) == 1  # PR_GET_NO_NEW_PRIVS",
        f"present = [path for path in {absent!r} if os.path.lexists(path)]\nassert present == [], present",
        "import socket\nassert socket.gethostname() == 'sandbox'",
    ]
    result = attack("import os\n", tests, python_guards=False)
    assert [(outcome.passed, outcome.reason) for outcome in result.outcomes] == [
        (True, ""), (True, ""), (False, EPERM + ": '.'"), (True, ""), (True, ""), (True, "")]
