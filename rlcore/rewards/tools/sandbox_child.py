"""The process inside the sandbox: runs candidate code against its asserts.

Started by `rlcore.rewards.tools.sandbox.run_tests` as

    python -I -S -B sandbox_child.py RESULT_FD JOB_FD

under bubblewrap (its private /sandbox as the working directory) or, only where
that is explicitly allowed, in a private directory of the host. Standard
library only; it imports nothing from rlcore.

1. Reads the job from JOB_FD ({"code", "tests", "test_cpu_s", "test_wall_s",
   "memory_mib", "token", "python_guards", "exec_filter", "rlimits"},
   marshalled by the parent into an anonymous file, so it never lies where
   candidate code could read the expected values), sets the rlimits on itself
   (hard limits too, which it cannot raise again) and closes every descriptor
   but RESULT_FD.
2. Loads `exec_filter` (a seccomp BPF program; empty without bubblewrap), which
   refuses execve and execveat from then on: bubblewrap's own filter had to let
   the interpreter start. ctypes, needed for that, is dropped from sys.modules
   again, so importing it in candidate code still meets the audit hook.
3. Installs the Python guards (unless "python_guards" is false, which tests use
   to show the kernel's walls hold alone): `socket.socket` and friends and
   `_posixsubprocess.fork_exec` replaced by versions that refuse, and an audit
   hook (sys.addaudithook, which cannot be removed) that refuses socket
   creation and use, process creation (os.fork, os.system, os.exec*,
   os.posix_spawn, subprocess.Popen), signals to other processes, writes and
   file-system changes outside the private directory, reads and listings
   outside it and the standard library, ctypes library loading and changes to
   resource limits; `signal.signal`, `signal.setitimer` and the like are
   replaced too, so candidate code cannot switch off its per-test timers. A
   refusal raises PermissionError("blocked: ...") in the candidate code and is
   also reported on RESULT_FD, so it is seen even when the code catches the
   exception.
3. For each test, executes code + "\\n" + test in a fresh namespace under two
   timers, SIGPROF after test_cpu_s of CPU time and SIGALRM after test_wall_s,
   and writes one line to RESULT_FD: "TOKEN<TAB>INDEX<TAB>passed|failed<TAB>
   REASON" with the reason as hex of its UTF-8 bytes (a refusal is reported as
   "TOKEN<TAB>blocked<TAB>-<TAB>DESCRIPTION"). The reason is str(exception)
   (empty for a bare failing assert), "timed out after ..." or "MemoryError (...)".
   Plain text, so the parent never unpickles or unmarshals what the child wrote,
   and no json/re import slows the start.

Guards at this level are best-effort: code running in this interpreter could in
principle reach the hook's state through introspection, and some calls raise no
audit event at all. The hard walls are the kernel's (namespaces and seccomp,
set up by bubblewrap and step 2) and the parent's: CPU, memory and file-size
rlimits and the wall clock with the whole process group killed.
"""

import marshal
import os
import resource
import signal
import sys

# Bound before candidate code runs, which could replace the builtins or module attributes.
_compile, _exec, _write, _realpath = compile, exec, os.write, os.path.realpath
_setitimer = signal.setitimer
_MAX_REPORTED_BLOCKS = 20
_MAX_REASON_CHARS = 1_000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

_PROCESS_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen"}
)
_SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg", "signal.pthread_kill"})
_LIMIT_EVENTS = frozenset({"resource.setrlimit", "resource.prlimit"})
_LIBRARY_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle"})
# event -> positions of the path arguments it changes
_PATH_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_LISTING_EVENTS = frozenset({"os.listdir", "os.scandir"})
_READABLE_DEVICES = frozenset({os.devnull, "/dev/urandom", "/dev/random", "/dev/zero"})


class _TestTimeout(BaseException):
    """Raised inside a test that runs past its CPU (SIGPROF) or wall-clock (SIGALRM) time."""


def _on_timer(signum, frame):
    raise _TestTimeout(signum)


def main() -> None:
    result_fd, job_fd = int(sys.argv[1]), int(sys.argv[2])
    with open(job_fd, "rb") as job_file:
        job = marshal.load(job_file)
    for limit, values in job["rlimits"].items():
        resource.setrlimit(limit, values)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, max(result_fd + 1, os.sysconf("SC_OPEN_MAX")))
    if job["exec_filter"]:
        _forbid_exec(job["exec_filter"])
    token = job["token"]

    def report(index: str, status: str, text: str) -> None:
        line = f"{token}\t{index}\t{status}\t{text.encode('utf-8', 'replace').hex()}\n"
        data = line.encode("ascii")
        while data:
            data = data[_write(result_fd, data) :]

    signal.signal(signal.SIGPROF, _on_timer)
    signal.signal(signal.SIGALRM, _on_timer)
    if job["python_guards"]:
        refuse = _refuser(report)
        _block_sockets(refuse)
        _block_fork_exec(refuse)
        _block_signal_changes(refuse)
        sys.addaudithook(_audit_hook(_realpath(os.getcwd()), refuse))
    for index, test in enumerate(job["tests"]):
        try:
            passed, reason = _run_one(job["code"], test, job)
        except _TestTimeout as timeout:  # a timer fired just as the test finished
            passed, reason = False, _timeout_reason(timeout, job)
        report(str(index), "passed" if passed else "failed", reason[:_MAX_REASON_CHARS])


def _forbid_exec(program: bytes) -> None:
    """Adds a seccomp filter (classic BPF, 8 bytes an instruction) to this process; bubblewrap has already
    set no_new_privs, which the kernel requires for it."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    instructions = ctypes.create_string_buffer(program, len(program))
    filter_program = SockFprog(len(program) // 8, ctypes.addressof(instructions))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(filter_program), 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"the sandbox could not load its exec filter: {os.strerror(error)}")
    del libc
    for name in [name for name in sys.modules if name in ("ctypes", "_ctypes") or name.startswith("ctypes.")]:
        del sys.modules[name]


def _run_one(code: str, test: str, job: dict) -> tuple[bool, str]:
    _setitimer(signal.ITIMER_PROF, job["test_cpu_s"])
    _setitimer(signal.ITIMER_REAL, job["test_wall_s"])
    try:
        _exec(_compile(code + "\n" + test, "<string>", "exec"), {"__name__": "__candidate__"})
        return True, ""
    except _TestTimeout as timeout:
        return False, _timeout_reason(timeout, job)
    except MemoryError:
        return False, f"MemoryError (memory limit {job['memory_mib']} MiB)"
    except BaseException as error:  # noqa: BLE001 - the candidate's failure is the result
        return False, _describe(error)
    finally:
        _setitimer(signal.ITIMER_PROF, 0)
        _setitimer(signal.ITIMER_REAL, 0)


def _timeout_reason(timeout: _TestTimeout, job: dict) -> str:
    if timeout.args and timeout.args[0] == signal.SIGPROF:
        return f"timed out after {job['test_cpu_s']} s of CPU time"
    return f"timed out after {job['test_wall_s']} s"


def _describe(error: BaseException) -> str:
    """str(error) as TARA's code_eval reports it; the type name when that is empty (bare asserts stay empty)."""
    try:
        text = str(error)
    except BaseException:  # noqa: BLE001 - a candidate's exception with a broken __str__
        text = ""
    if text or isinstance(error, AssertionError):
        return text
    return type(error).__name__


def _refuser(report):
    reported: set[str] = set()

    def refuse(what: str, detail: str) -> None:
        description = f"{what} ({detail})"
        if description not in reported and len(reported) < _MAX_REPORTED_BLOCKS:
            reported.add(description)
            report("blocked", "-", description)
        raise PermissionError(f"blocked: {description}")

    return refuse


def _block_sockets(refuse) -> None:
    import socket

    class BlockedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse("network", "socket.socket")

    def blocked(name):
        def call(*args, **kwargs):
            refuse("network", f"socket.{name}{args!r}")

        return call

    socket.socket = BlockedSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, name, blocked(name))


def _block_fork_exec(refuse) -> None:
    """subprocess's fork and exec in C raises no audit event of its own (subprocess.Popen does)."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        refuse("process creation", "_posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec


def _block_signal_changes(refuse) -> None:
    import _signal

    def blocked(name):
        def call(*args, **kwargs):
            refuse("changing signal handling", f"signal.{name}")

        return call

    for name in ("signal", "setitimer", "alarm", "pthread_sigmask", "siginterrupt", "set_wakeup_fd"):
        for module in (signal, _signal):
            if hasattr(module, name):
                setattr(module, name, blocked(name))


def _audit_hook(sandbox_dir: str, refuse):
    stdlib_dir = _realpath(os.path.dirname(os.__file__))

    def under(real: str, root: str) -> bool:
        return real == root or real.startswith(root + os.sep)

    def inside(path, readable_roots: tuple[str, ...] = ()) -> bool:
        if isinstance(path, int) or path is None:
            return True  # an already-open descriptor
        real = _realpath(os.fsdecode(path))
        if real == os.devnull or under(real, sandbox_dir):
            return True
        return bool(readable_roots) and (real in _READABLE_DEVICES or any(under(real, root) for root in readable_roots))

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, _mode, flags = args
            if (flags or 0) & _WRITE_FLAGS:
                if not inside(path):
                    refuse("write outside the sandbox directory", f"open {os.fsdecode(path)!r}")
            elif not inside(path, (stdlib_dir,)):
                refuse("read outside the sandbox directory", f"open {os.fsdecode(path)!r}")
        elif event in _LISTING_EVENTS:
            if not inside(args[0] if args[0] is not None else ".", (stdlib_dir,)):
                refuse("read outside the sandbox directory", f"{event} {args[0]!r}")
        elif event in _PATH_EVENTS:
            for position in _PATH_EVENTS[event]:
                if not inside(args[position]):
                    refuse("write outside the sandbox directory", f"{event} {args[position]!r}")
        elif event.startswith("socket."):
            refuse("network", event)
        elif event in _PROCESS_EVENTS:
            refuse("process creation", event)
        elif event in _SIGNAL_EVENTS:
            refuse("signals to other processes", event)
        elif event in _LIMIT_EVENTS:
            refuse("changing resource limits", event)
        elif event in _LIBRARY_EVENTS:
            refuse("loading native libraries", event)

    return hook


if __name__ == "__main__":
    main()
