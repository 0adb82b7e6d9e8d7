"""A small, safe filter language over the catalog tables (DuckDB is not a dependency).

An expression is parsed with Python's `ast` (never evaluated) and compiled to a
`pyarrow.compute` expression, so it runs vectorised on the Parquet table:

    dataset == 'lrs2' and official_split in ('train', 'val') and n_frames >= 50
    dataset = 'lrs3' AND NOT status = 'ok'              (SQL-style AND/OR/NOT and = also work)
    startswith(utt_id, 'pretrain/') and duration_s / 2 > 1.5
    speaker_id.startswith('id000') or transcript.contains('HELLO')
    detection_rate is None or detection_rate < 0.9

Names are columns; literals are strings, numbers, True/False/None; operators: comparisons
(chained too), in / not in (a list or tuple of literals), is None / is not None, and/or/not,
+ - * / and unary minus. Functions (also as methods): startswith, endswith, contains, match
(regular expression), lower, upper, length, is_null, is_valid, abs.
"""
from __future__ import annotations

import ast
import io
import tokenize

import pyarrow as pa
import pyarrow.compute as pc


class QueryError(ValueError):
    """An expression outside the language, or naming a column the table does not have."""


_COMPARE = {ast.Eq: pc.equal, ast.NotEq: pc.not_equal, ast.Lt: pc.less, ast.LtE: pc.less_equal,
            ast.Gt: pc.greater, ast.GtE: pc.greater_equal}
_ARITH = {ast.Add: pc.add, ast.Sub: pc.subtract, ast.Mult: pc.multiply, ast.Div: pc.divide}
_STRING_FUNCS = {
    "startswith": lambda x, s: pc.starts_with(x, pattern=s),
    "endswith": lambda x, s: pc.ends_with(x, pattern=s),
    "contains": lambda x, s: pc.match_substring(x, pattern=s),
    "match": lambda x, s: pc.match_substring_regex(x, pattern=s),
}
_UNARY_FUNCS = {"lower": pc.utf8_lower, "upper": pc.utf8_upper, "length": pc.utf8_length,
                "is_null": pc.is_null, "is_valid": pc.is_valid, "abs": pc.abs}
_SQL_WORDS = {"AND": "and", "OR": "or", "NOT": "not", "IN": "in", "IS": "is", "NULL": "None",
              "TRUE": "True", "FALSE": "False"}


def _normalise(text: str) -> str:
    """SQL spellings to Python ones, token by token (string literals are left alone)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text.strip()).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise QueryError(f"cannot read expression {text!r}: {exc}") from exc
    out = []
    for tok in tokens:
        s = tok.string
        if tok.type == tokenize.NAME and s.upper() in _SQL_WORDS and s not in ("True", "False", "None"):
            s = _SQL_WORDS[s.upper()]
        elif tok.type == tokenize.OP and s == "=":
            s = "=="
        elif tok.type == tokenize.OP and s == "<>":
            s = "!="
        out.append((tok.type, s))
    return tokenize.untokenize(out).strip()


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, int, float, bool))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)):
        return -node.operand.value
    raise QueryError(f"expected a literal, got {ast.unparse(node)!r}")


class _Compiler:
    def __init__(self, columns: list[str]):
        self.columns = columns

    def __call__(self, node: ast.AST):
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise QueryError(f"not allowed in a query: {ast.unparse(node)!r}")
        return method(node)

    def visit_Expression(self, node):
        return self(node.body)

    def visit_Name(self, node):
        if node.id not in self.columns:
            raise QueryError(f"unknown column {node.id!r}; columns: {', '.join(self.columns)}")
        return pc.field(node.id)

    def visit_Constant(self, node):
        return pc.scalar(_literal(node))

    def visit_BoolOp(self, node):
        parts = [self(v) for v in node.values]
        fn = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
        out = parts[0]
        for p in parts[1:]:
            out = fn(out, p)
        return out

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return pc.invert(self(node.operand))
        if isinstance(node.op, ast.USub):
            return pc.negate(self(node.operand))
        raise QueryError(f"operator not allowed: {ast.unparse(node)!r}")

    def visit_BinOp(self, node):
        fn = _ARITH.get(type(node.op))
        if fn is None:
            raise QueryError(f"operator not allowed: {ast.unparse(node)!r}")
        left, right = self(node.left), self(node.right)
        if isinstance(node.op, ast.Div):  # true division, as in Python and SQL on floats
            left = left.cast(pa.float64())
        return fn(left, right)

    def visit_Compare(self, node):
        out, left = None, node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                    raise QueryError(f"'in' needs a list of literals: {ast.unparse(right)!r}")
                values = [_literal(v) for v in right.elts]
                term = self(left).isin(values)
                term = pc.invert(term) if isinstance(op, ast.NotIn) else term
            elif isinstance(op, (ast.Is, ast.IsNot)):
                if _literal(right) is not None:
                    raise QueryError("'is' compares with None only")
                term = pc.is_null(self(left)) if isinstance(op, ast.Is) else pc.is_valid(self(left))
            else:
                term = _COMPARE[type(op)](self(left), self(right))
            out = term if out is None else pc.and_kleene(out, term)
            left = right
        return out

    def visit_Call(self, node):
        if node.keywords:
            raise QueryError("keyword arguments are not allowed")
        if isinstance(node.func, ast.Attribute):  # col.startswith('x') == startswith(col, 'x')
            name, args = node.func.attr, [node.func.value, *node.args]
        elif isinstance(node.func, ast.Name):
            name, args = node.func.id, list(node.args)
        else:
            raise QueryError(f"not a function call: {ast.unparse(node)!r}")
        if name in _STRING_FUNCS:
            if len(args) != 2:
                raise QueryError(f"{name}(column, 'text') takes two arguments")
            pattern = _literal(args[1])
            if not isinstance(pattern, str):
                raise QueryError(f"{name}: the pattern must be a string")
            return _STRING_FUNCS[name](self(args[0]), pattern)
        if name in _UNARY_FUNCS:
            if len(args) != 1:
                raise QueryError(f"{name}(x) takes one argument")
            return _UNARY_FUNCS[name](self(args[0]))
        raise QueryError(f"unknown function {name!r}; known: {sorted(_STRING_FUNCS) + sorted(_UNARY_FUNCS)}")


def compile_filter(text: str, columns: list[str]) -> pc.Expression:
    """The pyarrow expression of a filter; raises QueryError on anything outside the language."""
    source = _normalise(text)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise QueryError(f"cannot parse {text!r}: {exc.msg}") from exc
    expr = _Compiler(columns)(tree)
    if not isinstance(expr, pc.Expression):
        raise QueryError(f"{text!r} is not a condition")
    return expr


def filter_table(table: pa.Table, where: str | None) -> pa.Table:
    if not where or not where.strip():
        return table
    expr = compile_filter(where, table.column_names)
    try:
        return table.filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise QueryError(f"cannot evaluate {where!r}: {exc}") from exc


def run_query(table: pa.Table, where: str | None = None, columns: list[str] | None = None,
              order_by: list[str] | None = None, descending: bool = False, limit: int | None = None,
              group_by: list[str] | None = None) -> pa.Table:
    """Filter, then either group (count rows, sum duration_s when present) or select, order, limit."""
    out = filter_table(table, where)
    for name in (columns or []) + (order_by or []) + (group_by or []):
        if name not in out.column_names:
            raise QueryError(f"unknown column {name!r}; columns: {', '.join(out.column_names)}")
    if group_by:
        aggs = [(group_by[0], "count")]
        if "duration_s" in out.column_names:
            aggs.append(("duration_s", "sum"))
        out = out.group_by(group_by).aggregate(aggs)
        out = out.rename_columns([{f"{group_by[0]}_count": "rows", "duration_s_sum": "duration_s"}.get(c, c)
                                  for c in out.column_names])
        order_by = order_by or group_by
    elif columns:
        out = out.select(columns)
    if order_by:
        out = out.sort_by([(c, "descending" if descending else "ascending") for c in order_by])
    if limit is not None:
        out = out.slice(0, limit)
    return out


def format_rows(rows: list[dict], max_width: int = 48) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])

    def cell(v):
        s = "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
        return s if len(s) <= max_width else s[:max_width - 3] + "..."

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
