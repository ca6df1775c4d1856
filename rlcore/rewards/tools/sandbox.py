"""Runs untrusted candidate code against assert tests in a contained subprocess.

Each call gets a fresh private directory (the child's cwd, TMPDIR and HOME,
deleted afterwards) and one child interpreter (`python -I -S -B`: no user
site, no site-packages, no bytecode written, so only the standard library is
importable). The child (`sandbox_child.py`) runs every test in a fresh
namespace and reports each outcome on its own pipe, so the candidate's stdout
and stderr are just captured output.

Containment, from the outside in:

* wall clock: after `wall_s` the whole process group (the child runs in a new
  session) is killed with SIGKILL;
* CPU: RLIMIT_CPU (whole seconds) ends the child with SIGXCPU;
* memory: RLIMIT_AS, so allocations past `memory_mib` raise MemoryError;
* files: RLIMIT_FSIZE caps any file the child writes; no core dumps;
* network: the child replaces `socket.socket`, `socket.create_connection`
  and the other constructors and resolvers, and its audit hook refuses every
  socket event; where the machine allows it the child also runs under
  `unshare --net` (a network namespace with no interfaces up);
* processes: the audit hook refuses os.fork, os.system, os.exec*,
  os.posix_spawn and subprocess.Popen (RLIMIT_NPROC is not used: it does not
  bind root, who runs these jobs here);
* files outside the private directory: the audit hook refuses opening them for
  writing and removing, renaming, linking or changing them, and reading or
  listing anything but the standard library (no peeking at data files that
  hold the expected answers);
* per test: timers raise inside a test after `test_cpu_s` of CPU time
  (SIGPROF; machine load does not count) or `test_wall_s` (SIGALRM), and the
  next test still runs;
* output: stdout and stderr are read continuously and kept up to
  `output_bytes` each; the rest is counted and dropped.

Everything refused or cut is reported in `SandboxResult` (`blocked`,
`limits_hit`, the per-test `reason`).
"""

from __future__ import annotations

import marshal
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
_MAX_RESULT_BYTES = 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one `run_tests` call: per test (test_*) and for the whole run (all tests of one candidate)."""

    test_cpu_s: float = 3.0
    """CPU seconds one test may use before it fails with "timed out ..." (TARA's code_eval allowed 3 s)."""

    test_wall_s: float = 6.0
    """Wall-clock seconds one test may take (catches sleeping or blocked code)."""

    cpu_s: int = 10
    """CPU seconds for the whole run (RLIMIT_CPU, whole seconds; SIGXCPU then SIGKILL): three tests' worth."""

    wall_s: float = 20.0
    """Wall-clock seconds for the whole run; then the process group is killed."""

    memory_mib: int = 256
    """Address-space limit (RLIMIT_AS) in MiB; the interpreter itself needs about 30."""

    output_bytes: int = 64 * 1024
    """Bytes of stdout and of stderr kept; the rest is dropped and the result says so."""

    file_bytes: int = 16 * 1024 * 1024
    """Largest file the child may write (RLIMIT_FSIZE), inside its private directory."""

    network_namespace: bool = True
    """Also run the child under `unshare --net` when the machine permits it (the Python guards apply anyway)."""

    def __post_init__(self) -> None:
        for field in ("test_cpu_s", "test_wall_s", "cpu_s", "wall_s", "memory_mib", "output_bytes", "file_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"SandboxLimits.{field} must be positive, got {getattr(self, field)!r}")


@dataclass(frozen=True)
class TestOutcome:
    """How one assert statement fared."""

    __test__ = False  # not a pytest class

    test: str
    passed: bool
    reason: str = ""
    """Why it failed: the exception text (empty for a bare failing assert) or the limit that stopped it."""


@dataclass(frozen=True)
class SandboxResult:
    """Everything one run produced."""

    outcomes: tuple[TestOutcome, ...]
    blocked: tuple[str, ...]
    """Operations the guards refused, e.g. "network (socket.create_connection(('127.0.0.1', 8000),))"."""
    limits_hit: tuple[str, ...]
    """Process-level limits that ended the run, e.g. "Timeout after 20.0 s (wall clock)"."""
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool

    @property
    def passed(self) -> int:
        return sum(outcome.passed for outcome in self.outcomes)


def run_tests(code: str, tests: list[str] | tuple[str, ...], limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Runs `code + "\\n" + test` for each test in one contained child process.

    Safe to call from several threads at once (the TARA replay does): the code between
    fork and exec only calls setrlimit."""
    sandbox_dir = tempfile.mkdtemp(prefix="rlcore-sandbox-")
    result_read, result_write = os.pipe()
    try:
        token = secrets.token_hex(16)
        job = {"code": code, "tests": list(tests), "test_cpu_s": limits.test_cpu_s,
               "test_wall_s": limits.test_wall_s, "memory_mib": limits.memory_mib, "token": token}
        Path(sandbox_dir, "job.marshal").write_bytes(marshal.dumps(job))
        command = [*_namespace_prefix(limits.network_namespace), sys.executable, "-I", "-S", "-B",
                   str(CHILD_SCRIPT), str(result_write)]
        child = subprocess.Popen(
            command,
            cwd=sandbox_dir,
            env=_child_environment(sandbox_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_write,),
            start_new_session=True,
            preexec_fn=lambda: _apply_rlimits(limits),
        )
        os.close(result_write)
        result_write = -1
        streams, timed_out = _collect(child, result_read, limits)
        return _result(tests, token, streams, timed_out, child.returncode, limits)
    finally:
        os.close(result_read)
        if result_write >= 0:
            os.close(result_write)
        shutil.rmtree(sandbox_dir, ignore_errors=True)


def _apply_rlimits(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec."""
    memory = limits.memory_mib * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_environment(sandbox_dir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": sandbox_dir, "TMPDIR": sandbox_dir, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1"}


@cache
def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _namespace_prefix(wanted: bool) -> list[str]:
    return [shutil.which("unshare") or "unshare", "--net"] if wanted and _unshare_works() else []


@dataclass
class _Stream:
    limit: int
    kept: bytearray
    total: int = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]


def _collect(child: subprocess.Popen, result_read: int, limits: SandboxLimits) -> tuple[dict[str, _Stream], bool]:
    """Reads stdout, stderr and results until the child closes them or the wall clock runs out."""
    streams = {
        "stdout": _Stream(limits.output_bytes, bytearray()),
        "stderr": _Stream(limits.output_bytes, bytearray()),
        "results": _Stream(_MAX_RESULT_BYTES, bytearray()),
    }
    deadline = time.monotonic() + limits.wall_s
    timed_out = False
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ, "stdout")
        selector.register(child.stderr, selectors.EVENT_READ, "stderr")
        selector.register(result_read, selectors.EVENT_READ, "results")
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(timeout=remaining):
                data = os.read(key.fd, 65536)
                if data:
                    streams[key.data].add(data)
                else:
                    selector.unregister(key.fileobj)
    if not timed_out:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    _kill_group(child.pid)
    child.wait()
    child.stdout.close()
    child.stderr.close()
    return streams, timed_out


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(tests, token: str, streams: dict[str, _Stream], timed_out: bool, returncode: int,
            limits: SandboxLimits) -> SandboxResult:
    reasons: dict[int, tuple[bool, str]] = {}
    blocked: list[str] = []
    for line in streams["results"].kept.decode("ascii", "replace").splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] != token:
            continue
        _, index, status, text_hex = fields
        try:
            text = bytes.fromhex(text_hex).decode("utf-8", "replace")
        except ValueError:
            continue
        if index == "blocked":
            if text not in blocked:
                blocked.append(text)
        elif index.isdigit() and int(index) not in reasons and status in ("passed", "failed"):
            reasons[int(index)] = (status == "passed", text)

    limits_hit = []
    if timed_out:
        limits_hit.append(f"Timeout after {limits.wall_s} s (wall clock)")
    else:
        ended = _exit_reason(returncode, limits, streams["stderr"].kept)
        if ended:
            limits_hit.append(ended)
    if len(reasons) < len(tests) and not limits_hit:
        limits_hit.append("the sandbox process exited before every test had run")
    stdout, stderr = streams["stdout"], streams["stderr"]
    for name, stream in (("stdout", stdout), ("stderr", stderr)):
        if stream.total > stream.limit:
            limits_hit.append(f"{name} truncated to {stream.limit} bytes (of {stream.total})")

    not_run = limits_hit[0] if limits_hit else ""
    outcomes = tuple(
        TestOutcome(test, *reasons[index]) if index in reasons else TestOutcome(test, False, not_run)
        for index, test in enumerate(tests)
    )
    return SandboxResult(
        outcomes=outcomes,
        blocked=tuple(blocked),
        limits_hit=tuple(limits_hit),
        stdout=stdout.kept.decode("utf-8", "replace"),
        stderr=stderr.kept.decode("utf-8", "replace"),
        stdout_truncated=stdout.total > stdout.limit,
        stderr_truncated=stderr.total > stderr.limit,
    )


def _exit_reason(returncode: int, limits: SandboxLimits, stderr: bytes) -> str:
    """Why the child ended, when it was not a normal exit."""
    if returncode == 0:
        return ""
    if returncode == -signal.SIGXCPU:
        return f"CPU time limit of {limits.cpu_s} s exceeded"
    if returncode == -signal.SIGKILL:  # not ours: the hard CPU limit, or the kernel out of memory
        return f"killed by SIGKILL (CPU time limit of {limits.cpu_s} s exceeded, or out of memory)"
    if returncode == -signal.SIGXFSZ:
        return f"file size limit of {limits.file_bytes} bytes exceeded"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        memory_hint = f" (memory limit {limits.memory_mib} MiB?)" if name in ("SIGABRT", "SIGSEGV", "SIGBUS") else ""
        return f"killed by {name}{memory_hint}"
    last_line = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return f"the sandbox process exited with status {returncode}: {last_line[0][:200]}"
