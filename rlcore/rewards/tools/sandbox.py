"""Runs untrusted candidate code against assert tests in an isolated child process.

Each call starts one child interpreter (`python -I -S -B sandbox_child.py`: no
user site, no site-packages, no bytecode written) under bubblewrap (`bwrap`).
The child (`sandbox_child.py`) runs every test in a fresh namespace and reports
each outcome on its own pipe, so the candidate's stdout and stderr are just
captured output.

The boundary is the kernel's, set up by bubblewrap:

* files: a mount namespace that holds only the interpreter, its standard
  library and the system's shared libraries (`/usr/lib` and the like), all
  read-only and with site-packages hidden; /dev/null, zero, random and
  urandom; and a private writable tmpfs at `/sandbox` (cwd, TMPDIR and HOME;
  `tmp_bytes` in all) that vanishes with the child. No repository, home,
  data files, ptys or `/proc`;
* identity: its own user namespace, uid 65534, no capabilities, no new
  privileges, no further user namespaces;
* processes: its own PID namespace (it sees no other process, so it can
  signal none), a new session (no terminal injection), killed with its parent;
* network: its own network namespace, where 127.0.0.1 is its own loopback, so
  nothing listening on the host (Ray's dashboard and job server) is reachable;
* system calls: a seccomp filter, compiled once per process by libseccomp,
  refuses with EPERM fork, vfork, clone except for threads (clone3 answers
  ENOSYS, so glibc falls back to clone), sockets other than AF_UNIX, ptrace and
  other processes' memory, namespace and mount calls, and kernel facilities
  (bpf, io_uring, keyrings, modules, ...). bwrap has to exec the interpreter,
  so the child adds a second filter refusing execve and execveat before it
  reads the candidate code.

Inside that, as before:

* wall clock: after `wall_s` the whole process group is killed with SIGKILL
  (bwrap's, and with bwrap the whole PID namespace);
* rlimits, which the child sets on itself before it reads any candidate code
  (so no Python runs between fork and exec in the parent, whose fork would
  copy the page tables of a reward worker holding a model), and which it
  cannot raise again (no CAP_SYS_RESOURCE): CPU (whole seconds; SIGXCPU),
  address space (allocations past `memory_mib` raise MemoryError), file size
  (any one file), no core dumps;
* Python guards (defence in depth, and the source of the readable "blocked:
  ..." reports): an audit hook and replaced functions in the child refuse
  sockets, process creation, signals, ctypes, rlimit changes, and file access
  outside the private directory and the standard library. CPython's audit
  hooks are not a security boundary (`_posixsubprocess.fork_exec` raises no
  audit event, for one); the kernel layers above are;
* per test: timers raise inside a test after `test_cpu_s` of CPU time
  (SIGPROF; machine load does not count) or `test_wall_s` (SIGALRM), and the
  next test still runs;
* output: stdout and stderr are read continuously and kept up to
  `output_bytes` each; the rest is counted and dropped.

Everything the Python guards refused or the limits cut is reported in
`SandboxResult` (`blocked`, `limits_hit`, the per-test `reason`); a call the
kernel refuses fails in the candidate code with "[Errno 1] Operation not
permitted" (or the error of the missing file, the unreachable network).

Fail closed: where bubblewrap or libseccomp is missing, or bubblewrap cannot
start (no user namespaces, say), `run_tests` raises `SandboxUnavailable`, whose
message names what is missing and how to install it; `code_run` turns it into
an "Error: ..." observation. Only `SandboxLimits(allow_unconfined=True)` runs
without it, with the Python guards and rlimits alone and a warning in the log.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import marshal
import os
import resource
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CHILD_SCRIPT = Path(__file__).with_name("sandbox_child.py")
INSTALL_BUBBLEWRAP = "apt-get install bubblewrap"
_CHILD_IN_SANDBOX = "/rlcore/sandbox_child.py"
_PRIVATE_DIR = "/sandbox"  # a path no host file is likely to have, so the guards' "inside" stays exact
_SANDBOX_UID = 65534  # "nobody"
_MAX_RESULT_BYTES = 1 << 20
_log = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """The isolation the sandbox needs is missing here; the message says what and how to install it."""


@dataclass(frozen=True)
class SandboxLimits:
    """Settings for one `run_tests` call: limits per test (test_*) and for the whole run (all tests of one
    candidate), and how the child is isolated."""

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

    tmp_bytes: int = 64 * 1024 * 1024
    """Size of the private directory, all files together (a tmpfs, so memory; needs bubblewrap 0.7+)."""

    bwrap: str = "bwrap"
    """The bubblewrap executable: a name looked up on PATH, or a path."""

    allow_unconfined: bool = False
    """Where bubblewrap is missing or cannot start, run anyway with only the Python guards and rlimits,
    logging a warning. Candidate code can then act as the user running rlcore: only for machines where
    that is acceptable. False (the default) refuses instead (`SandboxUnavailable`)."""

    def __post_init__(self) -> None:
        for field in ("test_cpu_s", "test_wall_s", "cpu_s", "wall_s", "memory_mib", "output_bytes", "file_bytes",
                      "tmp_bytes"):
            if getattr(self, field) <= 0:
                raise ValueError(f"SandboxLimits.{field} must be positive, got {getattr(self, field)!r}")
        if not self.bwrap:
            raise ValueError("SandboxLimits.bwrap must name the bubblewrap executable, e.g. 'bwrap'")


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


def run_tests(code: str, tests: list[str] | tuple[str, ...], limits: SandboxLimits = SandboxLimits(), *,
              python_guards: bool = True) -> SandboxResult:
    """Runs `code + "\\n" + test` for each test in one isolated child process.

    Raises `SandboxUnavailable` where bubblewrap is missing or cannot start, unless
    `limits.allow_unconfined`. `python_guards=False` leaves out the child's audit hook and
    replaced functions, so that tests can show the kernel's walls hold on their own.
    Safe to call from several threads at once (the TARA replay does): no Python code runs
    between fork and exec."""
    return _run(code, tests, limits, python_guards, _bubblewrap(limits))


@dataclass(frozen=True)
class _Bubblewrap:
    """How to start the child under bubblewrap on this machine."""

    executable: str
    options: tuple[str, ...]
    """Every option but the per-call ones (the private directory's size, the seccomp descriptor)."""
    sizes_tmpfs: bool
    """Whether this bubblewrap has --size (0.7 and later)."""
    interpreter: str
    seccomp_program: bytes
    """BPF for bwrap's --seccomp: everything but exec (see the module docstring)."""
    exec_program: bytes
    """BPF that the child loads once started: execve and execveat refused."""

    def command(self, limits: SandboxLimits, seccomp_fd: int, child_arguments: list[str]) -> list[str]:
        size = ["--size", str(limits.tmp_bytes)] if self.sizes_tmpfs else []
        return [self.executable, *self.options, *size, "--tmpfs", _PRIVATE_DIR, "--chdir", _PRIVATE_DIR,
                "--seccomp", str(seccomp_fd), self.interpreter, "-I", "-S", "-B", _CHILD_IN_SANDBOX,
                *child_arguments]


def _bubblewrap(limits: SandboxLimits) -> _Bubblewrap | None:
    """The bubblewrap set-up; None where it is unavailable and `allow_unconfined` lets the run go on."""
    found = _probe_bubblewrap(limits.bwrap)
    if isinstance(found, _Bubblewrap):
        return found
    if not limits.allow_unconfined:
        raise SandboxUnavailable(found)
    _warn_unconfined(found)
    return None


@cache
def _warn_unconfined(reason: str) -> None:
    _log.warning("code sandbox runs WITHOUT OS isolation (SandboxLimits.allow_unconfined): %s. Candidate code "
                 "is held back only by Python-level guards and rlimits, which it can get around.", reason)


@cache
def _probe_bubblewrap(bwrap: str) -> _Bubblewrap | str:
    """The set-up, checked by running one trivial job under it; or why it cannot be had."""
    executable = shutil.which(bwrap)
    if executable is None:
        return (f"the code sandbox needs bubblewrap, and {bwrap!r} was not found (is it installed? "
                f"`{INSTALL_BUBBLEWRAP}`)")
    try:
        seccomp_program = _seccomp_program(_KERNEL_RULES)
        exec_program = _seccomp_program(_EXEC_RULES)
    except OSError as error:
        return (f"the code sandbox needs libseccomp (libseccomp.so.2) to build its system-call filter: {error} "
                f"(`apt-get install libseccomp2`)")
    try:
        usage = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap ({executable}) does not run: {error} (reinstall it: `{INSTALL_BUBBLEWRAP}`)"
    options = [
        "--unshare-all", "--unshare-user", "--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID),
        "--hostname", "sandbox", "--cap-drop", "ALL", "--new-session", "--die-with-parent",
        *(["--disable-userns"] if "--disable-userns" in usage else []),  # 0.8+; the seccomp filter refuses anyway
        *_mount_options(),
    ]
    interpreter = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    setup = _Bubblewrap(executable, tuple(options), "--size" in usage, interpreter, seccomp_program, exec_program)
    probe = _run("x = 1", ["assert x == 1"], SandboxLimits(wall_s=30.0), True, setup)
    if probe.passed != 1:
        reason = (probe.stderr.strip().splitlines() or [probe.outcomes[0].reason])[-1]
        return (f"bubblewrap ({executable}) could not start the code sandbox: {reason[:300]}. It needs user "
                "namespaces (as root, or with unprivileged user namespaces enabled: sysctl "
                "kernel.unprivileged_userns_clone=1, and on Ubuntu 24.04+ an AppArmor profile allowing bwrap) "
                "and seccomp")
    if not setup.sizes_tmpfs:
        _log.warning("bubblewrap at %s has no --size (0.7+): the sandbox's private directory is bounded by the per-file "
                     "limit and the wall clock only", executable)
    return setup


_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")  # no ptys, no /dev/shm
_SYSTEM_LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")


def _mount_options() -> list[str]:
    """bwrap options for the child's file system: the shared libraries, the interpreter and its standard
    library, read-only and at their own paths; site-packages hidden under empty read-only tmpfs; four
    devices; the child script."""
    options: list[str] = []
    bound: list[str] = []
    for path in _SYSTEM_LIBRARY_DIRS:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            options += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            options += ["--ro-bind", path, path]
            bound.append(path)
    options += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for path in _python_paths():
        if not any(_is_under(path, root) for root in bound):
            options += ["--ro-bind", path, path]
            bound.append(path)
    for path in _site_packages():
        if os.path.isdir(path) and any(_is_under(path, root) for root in bound):
            options += ["--tmpfs", path, "--remount-ro", path]
    for device in _DEVICES:
        options += ["--dev-bind", device, device]
    return options + ["--ro-bind", str(CHILD_SCRIPT.resolve()), _CHILD_IN_SANDBOX]


def _python_paths() -> list[str]:
    """The base interpreter (not a venv's), its shared libpython if it has one, the standard library and its
    extension modules."""
    config = sysconfig.get_config_var
    paths = [getattr(sys, "_base_executable", None) or sys.executable, os.path.dirname(os.__file__)]
    if config("Py_ENABLE_SHARED") and config("LIBDIR") and config("INSTSONAME"):
        paths.append(os.path.join(config("LIBDIR"), config("INSTSONAME")))
    if config("DESTSHARED"):
        paths.append(config("DESTSHARED"))
    return [os.path.realpath(path) for path in paths if os.path.exists(path)]


def _site_packages() -> list[str]:
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    paths = {sysconfig.get_path("purelib", vars=base), sysconfig.get_path("platlib", vars=base),
             os.path.join(stdlib, "site-packages"), os.path.join(stdlib, "dist-packages"),
             "/usr/lib/python3/dist-packages"}  # Debian's
    return sorted(os.path.realpath(path) for path in paths)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# Seccomp rules: (system call, errno it returns, conditions on its arguments, all of which must hold:
# (argument index, comparison, a, b)). Everything else is allowed.
_CMP_NE, _CMP_MASKED_EQ = 1, 7  # libseccomp's enum scmp_compare
_CLONE_THREAD = 0x00010000
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET."""
_REFUSED_SYSCALLS = (
    "fork", "vfork",  # clone is below: threads stay allowed
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "iopl", "ioperm",
)
_KERNEL_RULES = (
    *((name, errno.EPERM, ()) for name in _REFUSED_SYSCALLS),
    ("clone", errno.EPERM, ((0, _CMP_MASKED_EQ, _CLONE_THREAD, 0),)),  # a process, not a thread
    *(("clone", errno.EPERM, ((0, _CMP_MASKED_EQ, flag, flag),)) for flag in _CLONE_NAMESPACES),
    ("clone3", errno.ENOSYS, ()),  # its flags are in memory a filter cannot read; glibc falls back to clone
    ("socket", errno.EPERM, ((0, _CMP_NE, socket.AF_UNIX, 0),)),
    ("socketpair", errno.EPERM, ((0, _CMP_NE, socket.AF_UNIX, 0),)),
)
_EXEC_RULES = (("execve", errno.EPERM, ()), ("execveat", errno.EPERM, ()))


class _ArgumentComparison(ctypes.Structure):
    """libseccomp's struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _seccomp_program(rules) -> bytes:
    """Compiles rules into a classic-BPF seccomp program with libseccomp (native architecture; a call from
    any other architecture kills the process)."""
    libseccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    libseccomp.seccomp_init.restype = ctypes.c_void_p
    libseccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    libseccomp.seccomp_release.argtypes = [ctypes.c_void_p]
    libseccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    libseccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                  ctypes.POINTER(_ArgumentComparison)]
    libseccomp.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    allow = 0x7FFF0000  # SCMP_ACT_ALLOW
    context = libseccomp.seccomp_init(allow)
    if not context:
        raise OSError("seccomp_init failed")
    try:
        for name, error_number, conditions in rules:
            number = libseccomp.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # __NR_SCMP_ERROR: this libseccomp does not know the call
                continue
            comparisons = (_ArgumentComparison * max(1, len(conditions)))(
                *(_ArgumentComparison(*condition) for condition in conditions))
            status = libseccomp.seccomp_rule_add_array(context, 0x00050000 | error_number,  # SCMP_ACT_ERRNO
                                                       number, len(conditions), comparisons)
            if status < 0:
                raise OSError(-status, f"seccomp_rule_add for {name}: {os.strerror(-status)}")
        exported = os.memfd_create("rlcore-seccomp")
        try:
            status = libseccomp.seccomp_export_bpf(context, exported)
            if status < 0:
                raise OSError(-status, f"seccomp_export_bpf: {os.strerror(-status)}")
            return os.pread(exported, os.fstat(exported).st_size, 0)
        finally:
            os.close(exported)
    finally:
        libseccomp.seccomp_release(context)


def _run(code: str, tests, limits: SandboxLimits, python_guards: bool, bubblewrap: _Bubblewrap | None
         ) -> SandboxResult:
    token = secrets.token_hex(16)
    job = {"code": code, "tests": list(tests), "test_cpu_s": limits.test_cpu_s, "test_wall_s": limits.test_wall_s,
           "memory_mib": limits.memory_mib, "token": token, "python_guards": python_guards,
           "rlimits": _rlimits(limits),
           "exec_filter": bubblewrap.exec_program if bubblewrap else b""}
    result_read, result_write = os.pipe()
    job_fd = _memory_file("rlcore-sandbox-job", marshal.dumps(job))
    child_arguments = [str(result_write), str(job_fd)]
    passed_fds = [result_write, job_fd]
    sandbox_dir = None
    try:
        if bubblewrap is None:
            sandbox_dir = tempfile.mkdtemp(prefix="rlcore-sandbox-")
            command = [sys.executable, "-I", "-S", "-B", str(CHILD_SCRIPT), *child_arguments]
        else:
            passed_fds.append(_memory_file("rlcore-seccomp", bubblewrap.seccomp_program))
            command = bubblewrap.command(limits, passed_fds[-1], child_arguments)
        child = subprocess.Popen(
            command,
            cwd=sandbox_dir or "/",
            env=_child_environment(sandbox_dir or _PRIVATE_DIR),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=passed_fds,
            start_new_session=True,
        )
        for fd in passed_fds:
            os.close(fd)
        passed_fds = []
        streams, timed_out = _collect(child, result_read, limits)
        returncode = child.returncode
        if bubblewrap is not None and returncode > 128:  # bwrap exits 128 + N for a child killed by signal N
            returncode = 128 - returncode
        return _result(tests, token, streams, timed_out, returncode, limits)
    finally:
        os.close(result_read)
        for fd in passed_fds:
            os.close(fd)
        if sandbox_dir is not None:
            shutil.rmtree(sandbox_dir, ignore_errors=True)


def _rlimits(limits: SandboxLimits) -> dict[int, tuple[int, int]]:
    """(soft, hard) by resource, for the child to set on itself."""
    memory = limits.memory_mib * 1024 * 1024
    return {resource.RLIMIT_CPU: (limits.cpu_s, limits.cpu_s + 1), resource.RLIMIT_AS: (memory, memory),
            resource.RLIMIT_FSIZE: (limits.file_bytes, limits.file_bytes), resource.RLIMIT_CORE: (0, 0)}


def _memory_file(name: str, data: bytes) -> int:
    """A descriptor of an anonymous file holding `data`, positioned at its start."""
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _child_environment(sandbox_dir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": sandbox_dir, "TMPDIR": sandbox_dir, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1"}


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
    return f"the sandbox process exited with status {returncode}" + (f": {last_line[0][:200]}" if last_line[0] else "")
