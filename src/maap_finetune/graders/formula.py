"""A multi grader's `calculate_output`: arithmetic over its graders' names, read with `ast`, never `eval`.

The RFT docs allow `+ - * /`, `^` (power) and the functions min, max, abs, floor, ceil, exp, sqrt and log;
`**` is taken as power too. Numbers, grader names, those operators and calls are all a formula may hold.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log,
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class FormulaError(ValueError):
    pass


class Formula:
    """A parsed, checked formula; `evaluate(scores)` computes it for one row."""

    def __init__(self, text: str, names: Iterable[str]):
        self.text = text
        try:
            # `^` is power here; as Python's xor it would bind looser than `+`, so it is read as `**`.
            self._tree = ast.parse(text.strip().replace("^", "**"), mode="eval").body
        except SyntaxError as err:
            raise FormulaError(f"calculate_output {text!r} is not a formula ({err.msg})") from None
        known = set(names)
        used: set[str] = set()
        self._callees = {id(n.func) for n in ast.walk(self._tree) if isinstance(n, ast.Call)}
        for node in ast.walk(self._tree):
            self._check(node, known, used)
        self.names = frozenset(used)

    def _check(self, node: ast.AST, known: set[str], used: set[str]) -> None:
        if isinstance(node, ast.Name):
            if id(node) in self._callees:
                return  # checked with its call
            if node.id not in known:
                raise FormulaError(f"calculate_output {self.text!r} names {node.id!r}, which is not one of its "
                                   f"graders ({', '.join(sorted(known)) or 'none'}) nor a function "
                                   f"({', '.join(FUNCTIONS)})")
            used.add(node.id)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise FormulaError(f"calculate_output {self.text!r}: only {', '.join(FUNCTIONS)} can be called, "
                                   "with plain arguments")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise FormulaError(f"calculate_output {self.text!r}: {node.value!r} is not a number")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise FormulaError(f"calculate_output {self.text!r}: operator {type(node.op).__name__} is not "
                                   "allowed (use + - * / ^)")
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise FormulaError(f"calculate_output {self.text!r}: operator {type(node.op).__name__} is not allowed")
        elif not isinstance(node, (ast.Load, ast.operator, ast.unaryop)):
            raise FormulaError(f"calculate_output {self.text!r}: {type(node).__name__} is not allowed in a formula")

    def evaluate(self, scores: Mapping[str, float]) -> float:
        return float(self._eval(self._tree, scores))

    def _eval(self, node: ast.AST, scores: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)  # float powers overflow (an error) where int powers would run for ever
        if isinstance(node, ast.Name):
            return scores[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, scores), self._eval(node.right, scores))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, scores))
        return FUNCTIONS[node.func.id](*(self._eval(arg, scores) for arg in node.args))
