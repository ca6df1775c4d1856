"""`code_run`: runs an answer's code against the question's asserts in the sandbox.

TARA's action input is the literal "Same as the answer": the code is the
answer under judgement (`ToolContext.answer`) and the asserts are the row's
`test_list`. Any other action input is taken as the code itself.

The observation has TARA's form (its tool ran each assert as one problem of
HF `code_eval` and printed pass@1):

    The pass rate is 1.0. All test cases passed.
    The pass rate is 0.0. All test cases failed. Failed reason: name 're' is not defined
    The pass rate is 0.3333333333333333. 1 test cases passed, and 2 test cases failed.

Failure reasons are the distinct non-empty exception texts, in test order (TARA
joined a set, so its order varies), each cut to 300 characters. What only the
sandbox can report follows in one more sentence, so the containment is
visible to the reward model:

    ... Sandbox: blocked network (socket.create_connection(('127.0.0.1', 9),)); stdout truncated to 65536 bytes (of 1000001).

Where the sandbox cannot isolate the code (bubblewrap missing, say), the call
fails with a `ToolError` that says what to install, so `run_tool` observes
"Error: code_run: the code sandbox needs bubblewrap ..."; the code never runs
unconfined unless `SandboxLimits.allow_unconfined` says so.
"""

from __future__ import annotations

from rlcore.rewards.tools.base import NO_CONTEXT, ToolContext, ToolError
from rlcore.rewards.tools.sandbox import SandboxLimits, SandboxResult, SandboxUnavailable, run_tests

SAME_AS_ANSWER = "Same as the answer"
_MAX_REASON_CHARS = 300


def describe(result: SandboxResult) -> str:
    """TARA's observation text for a sandbox run, plus what the sandbox contained."""
    total = len(result.outcomes)
    passed = result.passed
    text = f"The pass rate is {passed / total}. "
    reasons = list(dict.fromkeys(outcome.reason[:_MAX_REASON_CHARS] for outcome in result.outcomes
                                 if not outcome.passed and outcome.reason))
    failed_reason = f" Failed reason: {'; '.join(reasons)}" if reasons else ""
    if passed == total:
        text += "All test cases passed."
    elif passed == 0:
        text += "All test cases failed." + failed_reason
    else:
        text += f"{passed} test cases passed, and {total - passed} test cases failed." + failed_reason
    notes = [f"blocked {what}" for what in result.blocked if f"blocked: {what}" not in reasons]
    notes += [limit for limit in result.limits_hit if limit not in reasons]
    if notes:
        text += f" Sandbox: {'; '.join(notes)}."
    return text


class CodeRun:
    """`code_run`: the pass rate of the answer's code on the row's asserts."""

    name = "code_run"

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        code = context.answer if action_input.strip() == SAME_AS_ANSWER else action_input
        if not code.strip():
            raise ToolError("code_run has no code: the action input is empty or says "
                            f"{SAME_AS_ANSWER!r} with no answer given")
        if not context.test_list:
            raise ToolError("code_run needs the question's test_list (assert statements)")
        try:
            return describe(run_tests(code, context.test_list, self.limits))
        except SandboxUnavailable as error:
            raise ToolError(str(error)) from error
