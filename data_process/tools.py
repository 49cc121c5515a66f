"""Tools a MiniMinds model can call: the `calculator` definition (an OpenAI/HF function schema for the chat
template's `tools=`, made from the function's signature and docstring by transformers) and a safe evaluator for the
arithmetic it is asked to compute.

The evaluator parses with `ast` and walks the tree itself: only numbers (int or float), + - * / // % **,
parentheses and a sign are accepted; names, calls, attributes, strings and everything else are refused. Nothing is
ever passed to `eval`, so model output can be evaluated as is. Every bound is checked before the work it limits:
expression length and size, exponent, result magnitude and wall time.

    >>> calculator("123 * 45 - 67")
    '5468'
"""

import ast
import math
import operator
import time

from transformers.utils import get_json_schema

MAX_EXPRESSION_CHARS = 200
MAX_NODES = 100
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e30
MAX_SECONDS = 0.05

BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY_OPERATORS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
REFUSED = {
    ast.Name: "names",
    ast.Call: "function calls",
    ast.Attribute: "attributes",
    ast.Subscript: "subscripts",
    ast.Compare: "comparisons",
    ast.BoolOp: "boolean operators",
    ast.Lambda: "lambdas",
}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message says which rule it broke."""


def _check_magnitude(value):
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"result magnitude exceeds {MAX_MAGNITUDE:g}")
    return value


def _power(base, exponent):
    """`base ** exponent`, refused before computing when the exponent or the result would be too large."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} exceeds {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError(f"result magnitude exceeds {MAX_MAGNITUDE:g}")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError("a negative number to a fractional power is not a real number")
    return result


def _evaluate(node, deadline):
    if time.perf_counter() > deadline:
        raise CalculatorError(f"evaluation took longer than {MAX_SECONDS} s")
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool is an int subclass: refused too
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return _check_magnitude(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPERATORS:
        return UNARY_OPERATORS[type(node.op)](_evaluate(node.operand, deadline))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        left, right = _evaluate(node.left, deadline), _evaluate(node.right, deadline)
        if isinstance(node.op, ast.Pow):
            return _check_magnitude(_power(left, right))
        try:
            return _check_magnitude(BINARY_OPERATORS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    kind = next((name for cls, name in REFUSED.items() if isinstance(node, cls)), f"{type(node).__name__} expressions")
    raise CalculatorError(f"{kind} are not allowed (only numbers, + - * / // % ** and parentheses)")


def evaluate_expression(expression: str) -> int | float:
    """The value of an arithmetic expression; CalculatorError (a ValueError) for anything else."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is {len(expression)} characters long, the limit is {MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CalculatorError(f"not an arithmetic expression: {getattr(err, 'msg', err)}") from None
    size = sum(1 for _ in ast.walk(tree))
    if size > MAX_NODES:
        raise CalculatorError(f"expression has {size} parts, the limit is {MAX_NODES}")
    return _evaluate(tree.body, time.perf_counter() + MAX_SECONDS)


def format_number(value: int | float) -> str:
    """How a tool result is written: integers exactly, floats with 10 significant digits (6 / 3 -> "2")."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.10g}"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses; returns the result.

    Args:
        expression: The expression, e.g. 123 * (45 - 6).
    """
    return format_number(evaluate_expression(expression))


def function_schema(function) -> dict:
    """The OpenAI/HF tool schema of a documented, type-hinted function, as the chat template's `tools=` takes it.

    transformers adds a `return` entry, which the OpenAI function format does not have; it is dropped so the
    schema in the data stays the OpenAI one.
    """
    schema = get_json_schema(function)
    schema["function"].pop("return", None)
    return schema


# The calculator's schema as the chat template renders the function itself (transformers' `return` entry included):
# TRL's tool loop and the held-out one offer the function, so calculator chats carry the same tokens. Without the
# entry the demo's SFT model wrote a well-formed call to 0 of 100 held-out questions offered the function (0.95 with
# the schema it was trained on).
CALCULATOR_TOOL = get_json_schema(calculator)
