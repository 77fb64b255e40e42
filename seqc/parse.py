"""Source text -> IR. One public function: `parse(source, filename) -> Spec`.

The grammar (grammar/seqc.lark) describes one line; a spec is a sequence of lines, so the parser
parses each line on its own and reports every syntax error of the file at once. Lark builds IR
nodes directly (LALR with an inline transformer), every node with its span.
"""
from __future__ import annotations

import math
from functools import lru_cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ir
from .errors import Diagnostic, SpecError, split_lines
from .resources import grammar_path

MAX_LINE_LENGTH = 20_000
MAX_NESTING = 64
MAX_DEPTH = 200

# How a syntax error names the terminals it expected; a literal terminal (`(`, `**`, `let`) is
# named by its text, so this lists only the patterns.
_PATTERN_WORDS = {
    "NAME": ("a name",), "NUMBER": ("a number",), "ADD_OP": ("`+`", "`-`"),
    "MUL_OP": ("`*`", "`/`", "`@`"), "TENSOR_KIND": ("`input`", "`param`", "`state`"),
    "$END": ("the end of the line",),
}


class _Line:
    """The source position of the line being parsed, so spans are file positions."""

    def __init__(self, filename: str, line: int):
        self.filename = filename
        self.line = line

    def span(self, meta) -> ir.Span:
        if getattr(meta, "empty", True):
            return ir.Span(self.filename, self.line, 1, self.line, 1)
        return ir.Span(self.filename, self.line, meta.column, self.line, meta.end_column)

    def token_span(self, token) -> ir.Span:
        return ir.Span(self.filename, self.line, token.column, self.line, token.end_column)


@v_args(meta=True, inline=True)
class _ToIR(Transformer):
    """Builds IR nodes; `self.where` is set to the current line before each parse."""

    where: _Line

    def model_decl(self, meta, name):
        return ("model", str(name), self.where.span(meta), self.where.token_span(name))

    def dim_name(self, meta, name):
        return ir.Dim(str(name), self.where.token_span(name))

    def dims_decl(self, meta, *dims):
        return ("dims", dims)

    def shape(self, meta, *dims):
        return dims

    def bound_pos(self, meta, number):
        return float(number)

    def bound_neg(self, meta, number):
        return -float(number)

    def bound_inf(self, meta, _):
        return math.inf

    def bound_neg_inf(self, meta, _):
        return -math.inf

    def value_range(self, meta, low, high):
        return (ir.Range(low, high), self.where.span(meta))

    def initial(self, meta, value):
        return value

    def tensor_item(self, meta, name, shape, value_range, initial):
        return (str(name), shape or (), value_range, initial, self.where.token_span(name))

    def tensor_decl(self, meta, kind, *items):
        return ("tensors", ir.TensorKind(str(kind)), items, self.where.span(meta))

    def const_decl(self, meta, name, value):
        return ir.Const(str(name), value, self.where.span(meta))

    def let_stmt(self, meta, name, value):
        return ir.Let(str(name), value, self.where.span(meta))

    def update_stmt(self, meta, name, value):
        return ir.Update(str(name), value, self.where.span(meta))

    def output_stmt(self, meta, name, shape, value):
        declared = tuple(d.name for d in shape) if shape else None
        return ("output", ir.Output(str(name), value, declared, self.where.span(meta)), shape)

    def binary(self, meta, left, op, right):
        return ir.Binary(ir.Op(str(op)), left, right, self.where.span(meta))

    def neg(self, meta, operand):
        return ir.Unary(ir.Op.NEG, operand, self.where.span(meta))

    def pow(self, meta, base, exponent):
        return ir.Binary(ir.Op.POW, base, exponent, self.where.span(meta))

    def relabel(self, meta, operand, dims):
        return ir.Call(ir.RELABEL, (operand,), None, self.where.span(meta),
                       dim_span=_dims_span(dims), relabel=tuple(d.name for d in dims))

    def num(self, meta, token):
        return ir.Num(float(token), self.where.token_span(token))

    def name(self, meta, token):
        return ir.Name(str(token), self.where.token_span(token))

    def call(self, meta, func, *args):
        span = self.where.span(meta)
        name = str(func)
        if name in ir.REDUCE_FUNCS and len(args) == 2 and isinstance(args[1], ir.Name):
            return ir.Call(name, (args[0],), args[1].id, span, dim_span=args[1].span)
        return ir.Call(name, tuple(args), None, span)


def _dims_span(dims) -> ir.Span:
    """From the first dim name of a `[...]` to the last."""
    first, last = dims[0].span, dims[-1].span
    return ir.Span(first.file, first.line, first.col, last.end_line, last.end_col)


@lru_cache(maxsize=1)
def _parser() -> tuple[Lark, _ToIR]:
    parser = Lark(grammar_path().read_text(encoding="utf-8"), start="line", parser="lalr",
                  propagate_positions=True, maybe_placeholders=True, cache=True)
    return parser, _ToIR()


def parse(source: str, filename: str = "<spec>") -> ir.Spec:
    """Parse a whole spec; raise SpecError with every syntax error of the file."""
    parser, transformer = _parser()
    diagnostics: list[Diagnostic] = []
    items = []
    for number, text in enumerate(split_lines(source), 1):
        code = text.split("#", 1)[0]
        if not code.strip():
            continue
        where = _Line(filename, number)
        problem = _line_too_complex(code, where)
        if problem:
            diagnostics.append(problem)
            continue
        transformer.where = where
        try:
            tree = parser.parse(code)
        except UnexpectedInput as error:
            diagnostics.append(_syntax_error(error, code, where))
            continue
        problems = _too_deep(tree, where, len(code)) or _too_large(tree, where)
        if problems:
            diagnostics.extend(problems)
        else:
            items.append(transformer.transform(tree))
    if diagnostics:
        raise SpecError(diagnostics, source)
    return _assemble(items, source, filename)


def _line_too_complex(code: str, where: _Line) -> Diagnostic | None:
    if len(code) > MAX_LINE_LENGTH:
        return Diagnostic("error", f"line is too long ({len(code)} characters; at most "
                          f"{MAX_LINE_LENGTH})", ir.Span(where.filename, where.line, 1, where.line, 2),
                          help="split the expression with `let`")
    depth = 0
    for col, char in enumerate(code, 1):
        depth += (char == "(") - (char == ")")
        if depth > MAX_NESTING:
            return Diagnostic("error", f"expression nested more than {MAX_NESTING} parentheses deep",
                              ir.Span(where.filename, where.line, col, where.line, col + 1),
                              help="split the expression with `let`")
    return None


def _too_deep(tree: Tree, where: _Line, length: int) -> list[Diagnostic]:
    """Measured on the parse tree (iteratively) before the recursive transformer sees it; the
    tree's root is the statement, so its depth is one more than the expression's."""
    depth, stack = 0, [(tree, 0)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in node.children if isinstance(child, Tree))
    if depth <= MAX_DEPTH:
        return []
    return [Diagnostic("error", f"expression is too deep ({depth} levels; at most {MAX_DEPTH})",
                      ir.Span(where.filename, where.line, 1, where.line, length + 1),
                      help="split the expression with `let`")]


def _too_large(tree: Tree, where: _Line) -> list[Diagnostic]:
    """Numbers that overflow a float (`1e400`) would silently become infinities."""
    return [Diagnostic("error", f"number `{token}` is too large", where.token_span(token),
                       help="numbers must fit a 64-bit float (at most about 1.8e308)")
            for token in tree.scan_values(lambda v: isinstance(v, Token) and v.type == "NUMBER")
            if math.isinf(float(token))]


def _syntax_error(error: UnexpectedInput, code: str, where: _Line) -> Diagnostic:
    col = getattr(error, "column", None) or len(code.rstrip()) + 1
    at_end = isinstance(error, UnexpectedEOF) or \
        isinstance(error, UnexpectedToken) and error.token.type == "$END"
    if col == -1 or at_end:
        col = len(code.rstrip()) + 1   # lark places `$END` on the last token, not after it
    if isinstance(error, UnexpectedCharacters):
        char = code[col - 1] if col - 1 < len(code) else "?"
        shown = f"`{char}`" if char.isprintable() else f"U+{ord(char):04X}"
        message = f"unexpected character {shown}"
        width = 1
    elif isinstance(error, UnexpectedToken) and error.token.type != "$END":
        message = f"unexpected `{error.token}`"
        width = max(1, len(str(error.token)))
    else:
        message = "unexpected end of line"
        width = 1
    expected = sorted({word for terminal in _expected(error) for word in _words(terminal)})
    help_text = f"expected {_join_or(expected)}" if expected and len(expected) <= 9 else None
    span = ir.Span(where.filename, where.line, col, where.line, col + width)
    return Diagnostic("error", f"syntax error: {message}", span, help_text)


def _expected(error: UnexpectedInput) -> set[str]:
    """The terminals that can follow. LALR merges lookaheads, so lark's `expected` may list
    tokens that fail a moment later (`q q` would "expect" `)`); the interactive parser tries
    each one for real."""
    interactive = getattr(error, "interactive_parser", None)
    if interactive is not None:
        return set(interactive.accepts())
    return set(getattr(error, "expected", None) or getattr(error, "allowed", None) or ())


def _words(terminal: str) -> tuple[str, ...]:
    if terminal in _PATTERN_WORDS:
        return _PATTERN_WORDS[terminal]
    pattern = _terminals().get(terminal)
    return (f"`{pattern.value}`",) if pattern is not None and pattern.type == "str" else ()


@lru_cache(maxsize=1)
def _terminals() -> dict:
    return {t.name: t.pattern for t in _parser()[0].terminals}


def _join_or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _assemble(items, source: str, filename: str) -> ir.Spec:
    """Collect the parsed lines into a Spec (the checker enforces order and uniqueness)."""
    name, name_span = "", ir.Span(filename, 1, 1, 1, 1)
    model_seen = []
    dims: list[ir.Dim] = []
    tensors: list[ir.Tensor] = []
    body: list[ir.Statement] = []
    consts: list[ir.Const] = []
    for item in items:
        if isinstance(item, tuple) and item[0] == "model":
            model_seen.append(item)
            if not name:
                name, name_span = item[1], item[3]
        elif isinstance(item, tuple) and item[0] == "dims":
            dims.extend(item[1])
        elif isinstance(item, tuple) and item[0] == "tensors":
            _, kind, entries, span = item
            for entry_name, shape, value_range, initial, entry_span in entries:
                tensors.append(ir.Tensor(kind, entry_name, tuple(d.name for d in shape),
                                         value_range[0] if value_range else None, initial,
                                         entry_span, tuple(d.span for d in shape)))
        elif isinstance(item, tuple) and item[0] == "output":
            body.append(item[1])
        elif isinstance(item, ir.Const):
            consts.append(item)
        else:
            body.append(item)
    return ir.Spec(name, tuple(dims), tuple(tensors), tuple(body), name_span, source,
                   tuple(m[2] for m in model_seen), tuple(consts))
