"""The TARA calculator: a safe arithmetic evaluator and the GSM8K annotation check.

`evaluate` parses with `ast` and walks the tree itself: numbers, + - * / // % **,
unary +/- and parentheses only. Names, calls, attributes, comparisons, bit
operations and anything else are refused; exponents and integer sizes are
bounded before they are computed, so "9**9**9" is refused rather than run.

The tool has two modes, chosen by its action input ("Same as the answer" stands for the
annotations of the answer under judgement, `ToolContext.answer`):

* TARA mode, for input like "<<62+70=132>>132, <<2*62=124>>124" (the
  annotations of a GSM8K-style answer, joined by ", "), or any input when the
  context carries a golden answer (an empty input then reports a calculated
  answer of None, as TARA's does). Each annotation's
  expression (text up to its first "=") is evaluated and compared exactly
  with its stated result (the text after ">>"); the last value computed is
  the calculated answer, compared exactly with the golden answer's number
  (`ToolContext.reference_answer`, the text after "####" or a bare number).
  The observation is one of the four sentences TARA's tool writes, e.g.
  "The calculation process is correct, but the resulting answer 130 does not
  match the predicted answer 192.0." ("predicted answer" is TARA's wording for
  the golden answer.) As in TARA, a stated result that is not a number stops
  the check there, and without a golden answer the observation is
  "No valid answer.".
* Plain mode, for other input with no golden answer: the value of the
  expression, e.g. "14".

Values print as Python prints them (130, 12.0, 14.99997000006), which is how
TARA's recorded observations print them.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from rlcore.rewards.tools.base import NO_CONTEXT, ToolContext, ToolError

MAX_EXPRESSION_CHARS = 2_000
MAX_INT_BITS = 4_096
"""Largest integer (in bits) an expression may produce: about 1,233 decimal digits."""

_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS = {ast.UAdd: operator.pos, ast.USub: operator.neg}

Number = int | float


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; `ToolError` for anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise ToolError(f"not an arithmetic expression: {expression.strip()!r}") from error
    try:
        return _value(tree.body)
    except ZeroDivisionError as error:
        raise ToolError("division by zero") from error
    except (OverflowError, RecursionError, MemoryError) as error:
        raise ToolError("result too large") from error


def _value(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
        return _UNARY_OPERATORS[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        result = _BINARY_OPERATORS[type(node.op)](left, right)
        if isinstance(result, complex):
            raise ToolError("the result is not a real number")
        return _bounded(result)
    if isinstance(node, ast.Name):
        raise ToolError(f"names are not allowed: {node.id!r}")
    if isinstance(node, ast.Call):
        raise ToolError("function calls are not allowed")
    if isinstance(node, ast.Attribute):
        raise ToolError("attributes are not allowed")
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuses a power whose integer result would exceed MAX_INT_BITS, before computing it."""
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return  # float powers overflow to OverflowError on their own, quickly
    if exponent > MAX_INT_BITS and abs(base) > 1:
        raise ToolError("exponent too large")
    if abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise ToolError("exponent too large")


def _bounded(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not math.isfinite(value):  # 1e308 * 10 is inf, not an error
        raise ToolError("result too large")
    return value


# ---- TARA annotation check -------------------------------------------------------------

_GOLDEN_NUMBER = re.compile(r"####\s*\*?\s*(-?[\d,]*\.?\d+)")
_BARE_NUMBER = re.compile(r"\s*(-?[\d,]*\.?\d+)\s*")


def golden_number(reference_answer: str) -> float | None:
    """The number after "####" in a GSM8K solution (or a bare number); None if there is none."""
    match = _GOLDEN_NUMBER.search(reference_answer) or _BARE_NUMBER.fullmatch(reference_answer)
    return float(match.group(1).replace(",", "")) if match else None


def check_annotations(action_input: str, golden: float) -> str:
    """TARA's observation for annotations "<<expr=value>>value, ..." against the golden number."""
    process_correct = True
    calculated: Number | None = None
    for annotation in action_input.split(", "):
        stated = re.sub(r"<<.*>>", "", annotation)  # what the text says the result is
        expression = re.sub(r"<<|=.*", "", annotation)
        try:
            value = evaluate(expression)
        except ToolError:
            process_correct = False
            continue
        try:
            stated_value = float(stated) if stated else None
        except ValueError:  # a stated result that is not a number ends the check, as in TARA
            process_correct = False
            break
        if stated_value is not None and value != stated_value:
            process_correct = False
        calculated = value

    answer_matches = calculated == golden
    if process_correct and answer_matches:
        return "Both the calculation and the answer are correct."
    if process_correct:
        return (
            f"The calculation process is correct, but the resulting answer {calculated} "
            f"does not match the predicted answer {golden}."
        )
    details = "Details: An unexpected error occurred during the calculation."
    if answer_matches:
        return f"The calculation process is incorrect, but the answer matches the predicted answer. {details}"
    return (
        f"Both the calculation and the answer are incorrect. {details} "
        f"The calculated answer {calculated} does not match the predicted answer {golden}."
    )


SAME_AS_ANSWER = "Same as the answer"
_ANNOTATION = re.compile(r"<<[^<>]*>>[-\d.]*")


def answer_annotations(answer: str) -> str:
    """The <<expr=value>>value annotations of a GSM8K-style answer, joined by ", " as TARA's action inputs are."""
    return ", ".join(match.rstrip(".") for match in _ANNOTATION.findall(answer))


class Calculator:
    """`calculator`: checks GSM8K annotations against the golden answer, or evaluates one expression. The
    action input "Same as the answer" (as code_run's) checks the annotations of the answer under judgement."""

    name = "calculator"

    def run(self, action_input: str, context: ToolContext = NO_CONTEXT) -> str:
        if action_input.strip() == SAME_AS_ANSWER:
            action_input = answer_annotations(context.answer)
        if "<<" not in action_input and not context.reference_answer:
            return str(evaluate(action_input))
        golden = golden_number(context.reference_answer)
        if golden is None:
            return "No valid answer."
        return check_annotations(action_input, golden)
