"""A safe arithmetic language for `multi` graders (and the demo calculator). No `eval`.

Grammar: numbers, names, `+ - * / ^` (`^` is power, `**` too), unary minus, parentheses and the
functions min, max, abs, floor, ceil, exp, sqrt, log (log(x) is natural, log(x, base) allowed).
The text is parsed with `ast` and the tree is walked over a whitelist of node types; every number is
a float, so `9^9^9` overflows to an error instead of building a huge integer.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

MAX_FORMULA_CHARS = 2000
MAX_DEPTH = 64


class FormulaError(ValueError):
    """The formula cannot be parsed, names something unknown, or cannot be evaluated."""


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    # name: (function, min args, max args or None for variadic)
    "min": (min, 1, None),
    "max": (max, 1, None),
    "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}


@dataclass(frozen=True)
class Formula:
    text: str
    names: frozenset[str]
    _tree: ast.Expression

    def evaluate(self, variables: Mapping[str, float]) -> float:
        """The value for `variables`; raises FormulaError for a math error or a non-finite result."""
        try:
            value = _evaluate(self._tree.body, variables)
        except ZeroDivisionError as exc:
            raise FormulaError("division by zero") from exc
        except OverflowError as exc:
            raise FormulaError("the result is too large") from exc
        except (ValueError, TypeError) as exc:
            raise FormulaError(f"math error: {exc}") from exc
        if isinstance(value, complex) or not math.isfinite(value):
            raise FormulaError(f"the result is not a finite number ({value})")
        return float(value)


def parse_formula(text: str, *, allowed_names: Collection[str]) -> Formula:
    """Parse and validate `text`; names outside `allowed_names` and functions are refused."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    source = text.replace("^", "**")  # `^` is power here, as in spreadsheets
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"syntax error at column {exc.offset or 0}: {exc.msg}") from exc
    except (RecursionError, MemoryError) as exc:
        raise FormulaError("the formula is nested too deeply") from exc
    names: set[str] = set()
    _validate(tree.body, allowed=set(allowed_names), names=names, depth=0)
    return Formula(text=text, names=frozenset(names), _tree=tree)


def _validate(node: ast.AST, *, allowed: set[str], names: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormulaError("the formula is nested too deeply")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only numbers are allowed, not {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise FormulaError(f"unknown name {node.id!r} (known: {known})")
        names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed (use + - * / ^)")
        _validate(node.left, allowed=allowed, names=names, depth=depth + 1)
        _validate(node.right, allowed=allowed, names=names, depth=depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
        _validate(node.operand, allowed=allowed, names=names, depth=depth + 1)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise FormulaError(f"unknown function (allowed: {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise FormulaError("keyword arguments are not allowed")
        _, min_args, max_args = FUNCTIONS[node.func.id]
        count = len(node.args)
        if count < min_args or (max_args is not None and count > max_args):
            raise FormulaError(
                f"{node.func.id}() takes {min_args}..{max_args or 'many'} arguments, got {count}"
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise FormulaError("* arguments are not allowed")
            _validate(arg, allowed=allowed, names=names, depth=depth + 1)
    else:
        raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


def _evaluate(node: ast.AST, variables: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(variables[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, variables), _evaluate(node.right, variables))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, variables))
    if isinstance(node, ast.Call):
        function = FUNCTIONS[node.func.id][0]  # type: ignore[union-attr]  # validated as a Name
        return float(function(*(_evaluate(arg, variables) for arg in node.args)))
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")
