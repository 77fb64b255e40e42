"""The checker: names, dims, shapes and program order. One public function, `check(spec)`.

It returns a `Checked` spec whose expressions carry their named dims (`expr.dims`) and whose names
carry what they refer to (`name.ref`), or raises SpecError with ALL errors of the file. A bad
sub-expression is poisoned (its dims are None) so that it yields one message, not a cascade.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, replace

from . import ir
from .errors import Diagnostic, SpecError, closest
from .shapes import ExpressionTyper, fmt_dims

MAX_NAME_LENGTH = 64
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
LANGUAGE_KEYWORDS = frozenset({"model", "dims", "input", "param", "state", "const", "let", "output",
                               "in", "inf"})
IMPLICIT_DIMS = frozenset({"B", "T", "H"})
RESERVED = LANGUAGE_KEYWORDS | frozenset(ir.FUNCS) | frozenset(keyword.kwlist) \
    | frozenset(keyword.softkwlist) | {"None", "True", "False", "final_state", "initial_state",
                                       "output_final_state", "cu_seqlens", ir.HEAD}


@dataclass(frozen=True)
class Checked:
    """A spec that passed the checker, with typed expressions; `warnings` are not fatal."""
    spec: ir.Spec
    warnings: tuple[Diagnostic, ...] = ()


def check(spec: ir.Spec) -> Checked:
    checker = _Checker(spec)
    checked = checker.run()
    errors = [d for d in checker.diagnostics if d.severity == "error"]
    if errors:
        raise SpecError(sorted(checker.diagnostics, key=_position), spec.source)
    return Checked(checked, tuple(sorted(checker.diagnostics, key=_position)))


def _position(d: Diagnostic):
    return (d.span.line, d.span.col)


class _Checker(ExpressionTyper):
    def __init__(self, spec: ir.Spec):
        self.spec = spec
        self.diagnostics: list[Diagnostic] = []
        self.dims: dict[str, ir.Dim] = {}
        self.tensors: dict[str, ir.Tensor] = {}
        self.consts: dict[str, ir.Const] = {}
        self.lets: dict[str, ir.Let] = {}
        self.outputs: dict[str, ir.Output] = {}
        self.state_versions: dict[str, int] = {}
        self.used: set[str] = set()
        self.poisoned: set[str] = set()      # declared with an error: known name, unknown shape
        self.unknown: set[str] = set()       # unknown names already reported (once each)

    def error(self, message: str, span: ir.Span, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic("error", message, span, help))

    def warning(self, message: str, span: ir.Span, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic("warning", message, span, help))

    # ---- declarations ---------------------------------------------------------------------

    def run(self) -> ir.Spec:
        spec = self.spec
        if not spec.model_spans and not spec.dims and not spec.tensors and not spec.body:
            self.error("the spec is empty", ir.Span(_file(spec), 1, 1, 1, 1),
                       help="a spec starts with `model NAME`; see docs/language.md")
            return spec
        self.check_model()
        for dim in spec.dims:
            self.declare_dim(dim)
        for tensor in spec.tensors:
            self.declare_tensor(tensor)
        for const in spec.consts:
            self.declare_const(const)
        consts = tuple(self.check_const(c) for c in spec.consts)
        body = tuple(self.check_statement(s) for s in spec.body)
        self.check_completeness(body, consts)
        return replace(spec, body=body, consts=consts)

    def check_model(self) -> None:
        spans = self.spec.model_spans
        if not spans:
            self.error("the spec has no `model NAME` line", ir.Span(_file(self.spec), 1, 1, 1, 1),
                       help="start the file with `model my_model`")
            return
        for extra in spans[1:]:
            self.error("`model` is given more than once", extra, help="a file holds one model")
        self.check_identifier(self.spec.name, self.spec.span, "model name")

    def check_identifier(self, name: str, span: ir.Span, what: str) -> bool:
        if not IDENTIFIER.match(name):
            self.error(f"`{name}` is not a valid {what}", span,
                       help="names start with a letter and hold letters, digits and `_`")
        elif len(name) > MAX_NAME_LENGTH:
            self.error(f"{what} `{name[:20]}...` is longer than {MAX_NAME_LENGTH} characters", span)
        elif name in IMPLICIT_DIMS and what in ("dim name", "const name"):
            self.error(f"`{name}` is reserved (batch, time and heads are implicit dims)", span,
                       help="choose another name, e.g. `D` or `N`" if what == "dim name"
                       else "choose another name, e.g. `scale`")
        elif name in RESERVED and not (what == "model name" and name in ir.FUNCS):
            self.error(f"`{name}` is a reserved word and cannot be {_article(what)} {what}", span)
        else:
            return True
        return False

    def already_declared(self, name: str) -> ir.Span | None:
        for table in (self.dims, self.tensors, self.consts, self.lets, self.outputs):
            if name in table:
                return table[name].span
        return None

    def declare_dim(self, dim: ir.Dim) -> None:
        earlier = self.already_declared(dim.name)
        if not self.check_identifier(dim.name, dim.span, "dim name"):
            self.poisoned.add(dim.name)
        elif earlier:
            self.error(f"`{dim.name}` is already declared (at line {earlier.line})", dim.span)
            return
        self.dims[dim.name] = dim

    def declare_tensor(self, tensor: ir.Tensor) -> None:
        what = f"{tensor.kind.value} name"
        ok = self.check_identifier(tensor.name, tensor.span, what)
        earlier = self.already_declared(tensor.name)
        if ok and earlier:
            self.error(f"`{tensor.name}` is already declared (at line {earlier.line})", tensor.span)
            return
        for dim, span in zip(tensor.dims, tensor.dim_spans or (tensor.span,) * len(tensor.dims)):
            if dim in self.poisoned:
                ok = False
            elif dim not in self.dims:
                ok = False
                suggestion = closest(dim, [d for d in self.dims if d not in self.poisoned])
                self.error(f"unknown dim `{dim}`", span,
                           help=f"did you mean `{suggestion}`?" if suggestion
                           else f"declare it first: `dims {dim}`")
            elif self.dims[dim].span.line > tensor.span.line:
                ok = False
                self.error(f"dim `{dim}` is used before its declaration (line "
                           f"{self.dims[dim].span.line})", span,
                           help="declare the dims first, after `model`")
        if len(set(tensor.dims)) != len(tensor.dims) and not _is_square(tensor):
            ok = False
            self.error(f"`{tensor.name}` repeats a dim", tensor.span,
                       help="a dim appears once per tensor, except in a square `param` such as "
                            "`param R[D, D]` used with `@`")
        if tensor.kind is ir.TensorKind.STATE and tensor.range is not None:
            self.error(f"a state takes no range (`{tensor.name}`)", tensor.span,
                       help="ranges describe inputs and params")
        if tensor.kind is not ir.TensorKind.STATE and tensor.init is not None:
            self.error(f"only a state has an initial value (`{tensor.name}`)", tensor.span)
        if tensor.range is not None and not tensor.range.low < tensor.range.high:
            self.error(f"empty range for `{tensor.name}`: the low bound must be below the high one",
                       tensor.span)
        self.tensors[tensor.name] = tensor
        if tensor.kind is ir.TensorKind.STATE:
            self.state_versions[tensor.name] = 0
        if not ok:
            self.poisoned.add(tensor.name)

    def declare_const(self, const: ir.Const) -> None:
        """Every const is known before any is typed, so that a use above its line is reported as
        such (not as an unknown name)."""
        if not self.check_identifier(const.name, const.span, "const name"):
            self.poisoned.add(const.name)
            self.consts.setdefault(const.name, const)
            return
        earlier = self.already_declared(const.name)
        if earlier and const.name in self.consts:
            self.error(f"const `{const.name}` is defined twice", const.span,
                       help=f"first defined at line {earlier.line}; a const has one default, and "
                            "a call may give another value")
        elif earlier:
            self.error(f"`{const.name}` is already declared (at line {earlier.line})", const.span,
                       help="a const needs a name of its own")
        else:
            self.consts[const.name] = const

    def check_const(self, const: ir.Const) -> ir.Const:
        """A const's default is a scalar of numbers, dim sizes and earlier consts: it is computed
        when a call binds the dims, before any tensor is read."""
        value = self.expr(const.value, const.span.line)
        if value.dims is None or const.name in self.poisoned:
            return replace(const, value=value)
        tensors = [n for n in ir.walk(value) if isinstance(n, ir.Name) and n.ref is not None
                   and n.ref.kind not in ("dim", "const")]
        if tensors:
            first = tensors[0]
            what = "the head index, one value a head" if first.ref.kind == "head" else \
                f"{_article(first.ref.kind)} {first.ref.kind}"
            self.error(f"the default of const `{const.name}` must be a scalar of numbers, dims and "
                       f"earlier consts, but `{first.id}` is {what}", first.span,
                       help="a const is a call-time number such as `const scale = K ** -0.5`; "
                            "use `let` for a value computed from tensors")
            self.poisoned.add(const.name)
        return replace(const, value=value)

    # ---- statements -----------------------------------------------------------------------

    def check_statement(self, statement: ir.Statement) -> ir.Statement:
        value = self.expr(statement.value, statement.span.line)
        value = replace(value, dims=self.elementwise_operand(value))   # no bare square matrix
        if isinstance(statement, ir.Let):
            return self.check_let(replace(statement, value=value))
        if isinstance(statement, ir.Update):
            return self.check_update(replace(statement, value=value))
        return self.check_output(replace(statement, value=value))

    def check_let(self, let: ir.Let) -> ir.Let:
        if not self.check_identifier(let.name, let.span, "name"):
            self.poisoned.add(let.name)
            self.lets.setdefault(let.name, let)
        else:
            earlier = self.already_declared(let.name)
            if earlier and let.name in self.lets:
                self.error(f"`{let.name}` is assigned twice", let.span,
                           help=f"`let` names are immutable (first assigned at line {earlier.line}); "
                                "use a new name")
            elif earlier:
                self.error(f"`{let.name}` is already declared (at line {earlier.line})", let.span)
            else:
                self.lets[let.name] = let
        return let

    def check_update(self, update: ir.Update) -> ir.Update:
        target = self.tensors.get(update.state)
        if target is None or target.kind is not ir.TensorKind.STATE:
            if update.state in (ir.HEAD, ir.HEADS) and target is None:
                what = "the head index" if update.state == ir.HEAD else "the number of heads"
                self.error(f"`{update.state}` is {what}, a built-in, and cannot be assigned",
                           update.span, help="use `let` with a name of your own for a new value")
            elif update.state in self.lets:
                self.error(f"`{update.state}` is a `let` and is assigned only once", update.span,
                           help="declare it as a state to carry it across steps")
            elif target is not None:
                self.error(f"cannot assign to {target.kind.value} `{update.state}`", update.span,
                           help="only states are updated; use `let` for a new local value")
            else:
                suggestion = closest(update.state, [t.name for t in self.tensors.values()
                                                    if t.kind is ir.TensorKind.STATE])
                self.error(f"assignment to unknown state `{update.state}`", update.span,
                           help=f"did you mean `{suggestion}`?" if suggestion
                           else f"declare it: `state {update.state}[...] = 0`, or use `let`")
            return update
        if target.span.line > update.span.line:
            self.error(f"state `{update.state}` is updated before its declaration (line "
                       f"{target.span.line})", update.span)
        value_dims = update.value.dims
        if value_dims is not None and update.state not in self.poisoned and \
                sorted(value_dims) != sorted(target.dims):
            self.error(f"the new value of `{update.state}` has dims {fmt_dims(value_dims)} but the "
                       f"state has {fmt_dims(target.dims)}", update.value.span,
                       help=_dims_help(value_dims, target.dims))
        self.state_versions[update.state] += 1
        return update

    def check_output(self, output: ir.Output) -> ir.Output:
        if self.check_identifier(output.name, output.span, "output name"):
            earlier = self.already_declared(output.name)
            if earlier and output.name in self.outputs:
                self.error(f"output `{output.name}` is defined twice", output.span,
                           help=f"first defined at line {earlier.line}")
            elif earlier:
                self.error(f"`{output.name}` is already declared (at line {earlier.line})",
                           output.span)
            else:
                self.outputs[output.name] = output
        dims = output.value.dims
        if output.declared_dims is not None:
            unknown = [d for d in output.declared_dims if d not in self.dims]
            if unknown:
                self.error(f"unknown dim `{unknown[0]}` in output `{output.name}`", output.span)
            elif any(d in self.poisoned for d in output.declared_dims):
                pass
            elif dims is not None and sorted(dims) != sorted(output.declared_dims):
                self.error(f"output `{output.name}` is declared {fmt_dims(output.declared_dims)} but its "
                           f"value has dims {fmt_dims(dims)}", output.value.span,
                           help=_dims_help(dims, output.declared_dims))
        return output

    def check_completeness(self, body: tuple[ir.Statement, ...],
                           consts: tuple[ir.Const, ...] = ()) -> None:
        if not any(isinstance(s, ir.Output) for s in body):
            self.error("the spec defines no output", self.spec.span,
                       help="add a line such as `output o = q @ S`")
        if self.spec.model_spans and not any(t.kind is ir.TensorKind.INPUT
                                             for t in self.spec.tensors):
            self.error(f"model `{self.spec.name}` has no input: the batch and the sequence length "
                       "come from the inputs", self.spec.span,
                       help="declare what arrives at each step, e.g. `input x[D]`")
        bad_declaration = any(t.name in self.poisoned for t in self.spec.inputs + self.spec.params)
        if self.spec.inputs and not bad_declaration:     # else the errors above explain it
            self.check_dims_bound(body + consts)
        if any(d.severity == "error" for d in self.diagnostics):
            return   # what is unused after an error is most likely the error's doing
        for tensor in self.tensors.values():
            if tensor.name in self.used:
                continue
            if tensor.kind is ir.TensorKind.STATE:
                if self.state_versions.get(tensor.name, 0) == 0:
                    self.warning(f"state `{tensor.name}` is never updated or read", tensor.span)
            else:
                self.warning(f"{tensor.kind.value} `{tensor.name}` is never used", tensor.span,
                             help="remove it, or use it in the step")
        for name, const in self.consts.items():
            if name not in self.used:
                self.warning(f"const `{name}` is never used", const.span,
                             help="remove it, or use it in the step")
        for name, state in self.tensors.items():
            if state.kind is ir.TensorKind.STATE and name in self.used and \
                    self.state_versions.get(name, 0) == 0:
                self.warning(f"state `{name}` is read but never updated", state.span,
                             help="a constant belongs in a `param`")


    def check_dims_bound(self, body: tuple[ir.Statement | ir.Const, ...]) -> None:
        """A dim's size comes from the call's inputs and params: one that none of them has
        cannot be given, and every call would fail."""
        bound = {d for t in self.spec.tensors if t.kind is not ir.TensorKind.STATE for d in t.dims}
        for name, dim in self.dims.items():
            if name in bound or name in self.poisoned:
                continue
            users = _dim_users(name, self.spec.states, body)
            used = f"is used by {users}, but" if users else "is declared, but"
            self.error(f"dim `{name}` {used} no input or param has it, so no call can give its "
                       "size", dim.span,
                       help=f"give an input or a param the dim (e.g. `input x[{name}]` or "
                            f"`param w[{name}]`)" + ("" if users else ", or remove it"))


def _dim_users(dim: str, states: tuple[ir.Tensor, ...],
               body: tuple[ir.Statement | ir.Const, ...]) -> str:
    """What uses a dim besides inputs and params: states, outputs, or the step's expressions
    (consts' defaults among them)."""
    users = [f"state `{s.name}`" for s in states if dim in s.dims]
    users += [f"output `{o.name}`" for o in body
              if isinstance(o, ir.Output) and dim in (o.declared_dims or ())]
    if not users and any(_mentions(s.value, dim) for s in body):
        users.append("the step")
    return ", ".join(users)


def _mentions(value: ir.Expr, dim: str) -> bool:
    return any(isinstance(n, ir.Name) and n.id == dim or isinstance(n, ir.Call) and n.dim == dim
               for n in ir.walk(value))


def _is_square(tensor: ir.Tensor) -> bool:
    return tensor.kind is ir.TensorKind.PARAM and len(tensor.dims) == 2 and \
        tensor.dims[0] == tensor.dims[1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _dims_help(have: tuple[str, ...], want: tuple[str, ...]) -> str | None:
    missing = [d for d in want if d not in have]
    extra = [d for d in have if d not in want]
    parts = []
    if extra:
        parts.append(f"reduce or remove {', '.join(f'`{d}`' for d in extra)}")
    if missing:
        parts.append(f"the value lacks {', '.join(f'`{d}`' for d in missing)}")
    return "; ".join(parts) or None


def _file(spec: ir.Spec) -> str:
    return spec.span.file
