"""Each kind of misbehaving candidate code is contained and reported; good code still passes.

Limits are tight so every test is bounded: per test 0.3 s of CPU or 1 s of wall
clock, the run 2 CPU seconds and 8 s of wall clock. Timings are checked
loosely because the machine may be busy.
"""

import logging
import os
import socket
import time

import pytest

from rlcore.rewards.tools import run_tool
from rlcore.rewards.tools.base import ToolContext
from rlcore.rewards.tools.code_run import CodeRun, describe
from rlcore.rewards.tools.sandbox import INSTALL_BUBBLEWRAP, SandboxLimits, SandboxUnavailable, run_tests

LIMITS = SandboxLimits(test_cpu_s=0.3, test_wall_s=1.0, cpu_s=2, wall_s=8.0, memory_mib=128, output_bytes=1000)
BOUND_S = 15.0  # no run may take longer than this, whatever it does


def run(code, tests=("assert True",), limits=LIMITS):
    started = time.monotonic()
    result = run_tests(code, list(tests), limits)
    assert time.monotonic() - started < BOUND_S
    return result


def test_correct_code_passes():
    result = run("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
    assert [outcome.passed for outcome in result.outcomes] == [True, True]
    assert result.blocked == () and result.limits_hit == ()
    assert describe(result) == "The pass rate is 1.0. All test cases passed."


def test_failing_asserts_are_reported():
    """Three tests: one passes, a bare assert fails (no reason, as in TARA), one raises NameError."""
    result = run("def add(a, b):\n    return a - b\n",
                 ["assert add(2, 0) == 2", "assert add(1, 2) == 3", "assert missing(1)"])
    assert [outcome.passed for outcome in result.outcomes] == [True, False, False]
    assert describe(result) == ("The pass rate is 0.3333333333333333. 1 test cases passed, and 2 test cases "
                                "failed. Failed reason: name 'missing' is not defined")


def test_syntax_error_is_reported_with_its_line():
    result = run("def f(:\n    pass\n")
    assert "(<string>, line 1)" in result.outcomes[0].reason


def test_infinite_loop_times_out_and_the_next_test_still_runs():
    result = run("def spin():\n    while True:\n        pass\n", ["spin()", "assert 1 + 1 == 2"])
    assert not result.outcomes[0].passed
    assert result.outcomes[0].reason.startswith("timed out after")
    assert result.outcomes[1].passed
    assert "Failed reason: timed out after" in describe(result)


def test_loop_that_swallows_the_timer_is_stopped_by_the_hard_limits():
    """The per-test timer's exception is caught, so only RLIMIT_CPU or the wall clock can end it."""
    code = "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n"
    result = run(code, limits=SandboxLimits(test_cpu_s=0.2, test_wall_s=0.5, cpu_s=1, wall_s=3.0))
    assert result.limits_hit[0] in ("CPU time limit of 1 s exceeded", "Timeout after 3.0 s (wall clock)")
    assert result.outcomes[0].reason == result.limits_hit[0]
    assert f"Sandbox: {result.limits_hit[0]}" not in describe(result)  # already the failure reason


def test_sleeping_code_times_out_on_the_wall_clock():
    result = run("import time\ntime.sleep(60)\n")
    assert result.outcomes[0].reason == "timed out after 1.0 s"


def test_disabling_the_timers_is_blocked():
    result = run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n")
    assert result.outcomes[0].reason == "blocked: changing signal handling (signal.signal)"


@pytest.mark.parametrize(
    "bomb",
    ["x = bytearray(4 * 1024 ** 3)", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))"],
)
def test_memory_bomb_hits_the_memory_limit(bomb):
    """Zeroing 128 MiB takes about 0.1 s, but many times that on a loaded machine: the per-test timers are
    loose here, so that only the memory limit ends the bomb."""
    loose_timers = SandboxLimits(test_cpu_s=3.0, test_wall_s=5.0, cpu_s=4, wall_s=10.0, memory_mib=128)
    result = run("def add(a, b):\n    return a + b\n", [bomb, "assert add(2, 2) == 4"], loose_timers)
    assert result.outcomes[0].reason == "MemoryError (memory limit 128 MiB)"
    assert result.outcomes[1].passed  # the memory was freed with the test's namespace


def test_write_outside_the_sandbox_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    kept = tmp_path / "kept.txt"
    kept.write_text("precious")
    result = run("import os\n", [
        f"open({str(outside)!r}, 'w').write('x')",
        f"os.remove({str(kept)!r})",
        f"os.rename({str(kept)!r}, 'stolen.txt')",
        f"try:\n    open({str(outside)!r}, 'a')\nexcept OSError:\n    pass",
    ])
    assert not outside.exists()
    assert kept.read_text() == "precious"
    assert [outcome.reason for outcome in result.outcomes] == [
        f"blocked: write outside the sandbox directory (open {str(outside)!r})",
        f"blocked: write outside the sandbox directory (os.remove {str(kept)!r})",
        f"blocked: write outside the sandbox directory (os.rename {str(kept)!r})",
        "",  # the code caught the refusal and passed, but the refusal is still reported:
    ]
    assert result.outcomes[3].passed
    assert describe(result).startswith("The pass rate is 0.25. 1 test cases passed, and 3 test cases failed. "
                                       "Failed reason: blocked: write outside the sandbox directory (open ")


def test_writes_inside_the_private_directory_work_and_it_is_gone_afterwards():
    """The private directory is a tmpfs of the child's own: empty at the start of every run, never on the host."""
    write = "import os, tempfile\nopen('scratch.txt', 'w').write('ok')\ntempfile.mkstemp()\nprint(os.getcwd())\n"
    result = run(write, ["assert sorted(os.listdir('.'))[0] == 'scratch.txt', os.listdir('.')"])
    assert result.outcomes[0].passed
    sandbox_dir = result.stdout.strip()
    assert sandbox_dir == "/sandbox" and not os.path.exists(sandbox_dir)
    assert run("import os\n", ["assert os.listdir('.') == [], os.listdir('.')"]).outcomes[0].passed


def test_symlink_escape_is_refused(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("precious")
    result = run(f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')\n")
    assert "blocked: write outside the sandbox directory (open 'link')" == result.outcomes[0].reason
    assert target.read_text() == "precious"


def test_network_connection_is_refused():
    """A server on 127.0.0.1 (and only there) must see no connection from the sandbox."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        result = run(
            "import socket\n",
            [f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
             f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))",
             f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\nexcept OSError:\n    pass"],
        )
        with pytest.raises(BlockingIOError):
            server.accept()
    first, raw, swallowed = result.outcomes
    assert first.reason == f"blocked: network (socket.create_connection(('127.0.0.1', {port}),))"
    assert raw.reason == "blocked: network (socket.__new__)"  # the audit hook, below the socket module
    assert swallowed.passed  # the code caught the refusal, but the sandbox still reports it:
    assert f"network (socket.create_connection(('127.0.0.1', {port}),))" in result.blocked


@pytest.mark.parametrize(
    ("code", "event"),
    [
        ("import os\nwhile True:\n    os.fork()\n", "os.fork"),
        ("import subprocess\nsubprocess.run(['true'])\n", "subprocess.Popen"),
        ("import os\nos.system('true')\n", "os.system"),
        ("import os\nos.execv('/bin/true', ['true'])\n", "os.exec"),
        ("import multiprocessing\nmultiprocessing.Process(target=print).start()\n", "os.fork"),
    ],
)
def test_process_creation_is_refused(code, event):
    result = run(code)
    assert result.outcomes[0].reason == f"blocked: process creation ({event})"


def test_fork_bomb_that_swallows_the_refusal_is_stopped_and_reported():
    result = run("import os\nwhile True:\n    try:\n        os.fork()\n    except PermissionError:\n        pass\n")
    assert result.outcomes[0].reason.startswith("timed out after")
    assert result.blocked == ("process creation (os.fork)",)


def test_output_is_capped():
    result = run("print('x' * 100_000)\nimport sys\nsys.stderr.write('y' * 5000)\n")
    assert result.outcomes[0].passed
    assert result.stdout == "x" * 1000 and result.stdout_truncated
    assert result.stderr == "y" * 1000 and result.stderr_truncated
    assert describe(result) == ("The pass rate is 1.0. All test cases passed. Sandbox: stdout truncated to "
                                "1000 bytes (of 100001); stderr truncated to 1000 bytes (of 5000).")


def test_exiting_early_fails_the_remaining_tests():
    result = run("import os\nos._exit(0)\n", ["assert True", "assert True"])
    assert [outcome.reason for outcome in result.outcomes] == [
        "the sandbox process exited before every test had run"] * 2


def test_the_expected_values_are_out_of_reach(tmp_path):
    """The job file is gone before the code runs, and files outside (a data set, say) cannot be read."""
    answers = tmp_path / "answers.jsonl"
    answers.write_text("42")
    result = run("import os\n", ["assert os.listdir('.') == [], os.listdir('.')", f"open({str(answers)!r}).read()",
                                  f"os.listdir({str(tmp_path)!r})", "import json, re, collections"])
    assert [outcome.reason for outcome in result.outcomes] == [
        "",
        f"blocked: read outside the sandbox directory (open {str(answers)!r})",
        f"blocked: read outside the sandbox directory (os.listdir {str(tmp_path)!r})",
        "",  # the standard library stays importable
    ]


def test_without_bubblewrap_the_sandbox_refuses_to_run(tmp_path):
    """Fail closed: no bwrap means no run at all (the code would have left a marker), and code_run's
    observation says what to install."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    missing = SandboxLimits(bwrap=str(tmp_path / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable, match="needs bubblewrap") as refusal:
        run_tests(code, ["assert True"], missing)
    assert INSTALL_BUBBLEWRAP in str(refusal.value)
    observation = run_tool("code_run", code, ToolContext(test_list=("assert True",)), {"code_run": CodeRun(missing)})
    assert observation.startswith("Error: code_run: the code sandbox needs bubblewrap")
    assert INSTALL_BUBBLEWRAP in observation
    assert not marker.exists()


def test_a_bubblewrap_that_cannot_start_is_refused_too():
    with pytest.raises(SandboxUnavailable, match="could not start the code sandbox"):
        run_tests("x = 1", ["assert x == 1"], SandboxLimits(bwrap="false"))


def test_the_weaker_mode_runs_only_when_asked_and_warns(tmp_path, caplog):
    limits = SandboxLimits(bwrap=str(tmp_path / "no-such-bwrap"), allow_unconfined=True)
    with caplog.at_level(logging.WARNING, logger="rlcore.rewards.tools.sandbox"):
        result = run_tests("import os\n", ["assert os.getcwd() != '/sandbox'", "os.fork()"], limits)
    assert "WITHOUT OS isolation" in caplog.text
    assert result.outcomes[0].passed  # it ran on the host, in a private directory of the host's
    assert result.outcomes[1].reason == "blocked: process creation (os.fork)"  # the Python guards still hold


def test_limits_are_validated():
    with pytest.raises(ValueError, match="SandboxLimits.wall_s must be positive"):
        SandboxLimits(wall_s=0)
