"""
Editing and comparing train.py through its AST: whether it compiles, the tunable constants, exact rewrites,
change types.

Tunable constants are module-level `UPPER_CASE = <int | float | bool>` assignments
(a leading minus allowed). Rewrites replace only the literal's source span, so
comments and formatting survive, and the result is parsed again before use.
"""

from __future__ import annotations

import ast
import difflib

from infra.records import ChangeType

Number = int | float | bool
# names of constants that live in [0, 1): the searchers (offline, optuna's space) keep them there
UNIT_INTERVAL_HINTS = ("MOMENTUM", "DROPOUT", "BETA", "SMOOTHING")
MAX_CODE_BYTES = 128 * 1024  # a real train.py is a few KiB; parsing and classifying cost ~650x the bytes


def syntax_error(code: str) -> str | None:
    """Why code is not a train.py that can run, or None. Never raises, whatever the text."""
    if len(code.encode("utf-8", errors="replace")) > MAX_CODE_BYTES:
        return f"train.py is larger than {MAX_CODE_BYTES // 1024} KiB"
    try:
        compile(code, "train.py", "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        return f"syntax error at line {getattr(exc, 'lineno', None)}: {getattr(exc, 'msg', exc)}"
    except (MemoryError, RecursionError, OverflowError) as exc:  # pathological nesting or length
        return f"train.py cannot be compiled: {type(exc).__name__}"
    return None


def _literal(node: ast.expr) -> Number | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    return None


def _constant_nodes(tree: ast.Module) -> dict[str, ast.expr]:
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if name.isupper() and _literal(stmt.value) is not None:
                found[name] = stmt.value
    return found


def tunable_constants(code: str) -> dict[str, Number]:
    """UPPER_CASE numeric and boolean constants at module level, in file order."""
    return {name: _literal(node) for name, node in _constant_nodes(ast.parse(code)).items()}


def _format(value: Number) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return repr(value)
    return f"{value:.6g}" if "e" not in f"{value:.6g}" else repr(value)


def set_constants(code: str, changes: dict[str, Number]) -> str:
    """code with the named constants set to new values; everything else byte-identical."""
    nodes = _constant_nodes(ast.parse(code))
    unknown = set(changes) - set(nodes)
    if unknown:
        raise KeyError(f"not tunable constants in train.py: {sorted(unknown)}")
    lines = code.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode()))
    raw = code.encode()
    spans = sorted(
        ((nodes[n], v) for n, v in changes.items()), key=lambda nv: (nv[0].lineno, nv[0].col_offset), reverse=True
    )
    for node, value in spans:
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        raw = raw[:start] + _format(value).encode() + raw[end:]
    new_code = raw.decode()
    got = tunable_constants(new_code)  # parses again: never returns invalid Python
    for name, value in changes.items():
        if got[name] != value and not (isinstance(value, float) and abs(got[name] - value) <= 1e-6 * abs(value)):
            raise AssertionError(f"rewrite of {name} produced {got[name]!r}, wanted {value!r}")
    return new_code


class _BlankConstants(ast.NodeTransformer):
    def visit_Assign(self, node: ast.Assign) -> ast.Assign:
        if (
            len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and _literal(node.value) is not None
        ):
            node.value = ast.Constant(value=None)
        return node


def classify_change(old: str, new: str) -> ChangeType:
    """NONE (comments or layout only), PARAMETRIC (only tunable constants) or STRUCTURAL
    (also for code that cannot be parsed or is nested too deeply to walk: it never raises)."""
    try:
        old_tree, new_tree = ast.parse(old), ast.parse(new)
        if ast.dump(old_tree) == ast.dump(new_tree):
            return ChangeType.NONE
        blank_old = ast.dump(_BlankConstants().visit(old_tree))
        blank_new = ast.dump(_BlankConstants().visit(new_tree))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ChangeType.STRUCTURAL
    return ChangeType.PARAMETRIC if blank_old == blank_new else ChangeType.STRUCTURAL


# difflib's time grows with the product of the two files' lines: two files of 21,000 lines under the code cap, built to
# match one line at a time, cost 77 CPU s per diff (red team). A real train.py has a few hundred lines.
MAX_DIFF_LINES = 2_000


def unified_diff(old: str, new: str, old_name: str = "incumbent/train.py", new_name: str = "candidate/train.py") -> str:
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if max(len(old_lines), len(new_lines)) > MAX_DIFF_LINES:
        return (
            f"--- {old_name}\n+++ {new_name}\n(no diff: {len(old_lines)} and {len(new_lines)} lines, more than "
            f"{MAX_DIFF_LINES} on a side)\n"
        )
    return "".join(difflib.unified_diff(old_lines, new_lines, old_name, new_name))
