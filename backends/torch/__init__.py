"""Backend: torch — the parallel PyTorch forms, emitted from the analysis' Plan.

Each state group of the Plan runs in its kernel family (chunk, chunk_delta, scan, coupled scan,
semiring; one template each, beside a .md stating its math); a Plan with a sequential group runs
the step loop, with the state-independent lets computed for every step at once. Role expressions (decays, keys,
values, queries, coefficients) are rendered here over whole sequences `[B, T, H, ...]` and handed
to the family functions time-second, `[B, H, T, ...]`.
"""
from __future__ import annotations

import ast

from seqc import ir
from seqc.plan import MATRIX_KINDS
from seqc.backends.torch_render import (PRELUDE, FactoringTorchRenderer, TorchRenderer,
                                         constant_tensor, is_constant, step_value)
from seqc.templates import render

from .roles import GroupEmitter, output_dims, plain_reads, supported, templates

PREFIX = {"input": "in_", "param": "par_", "let": "let_", "dim": "dim_", "read": "rd_"}


def emit(program) -> str:
    return emit_plan(program.analysis.plan)


# families with a derived adjoint beside them: the templates it needs, itself last
ADJOINTS = {"chunk.py.j2": ("chunk_adjoint.py.j2",),
            "chunk_delta.py.j2": ("chunk_delta_adjoint.py.j2",),
            "chunk_dplr.py.j2": ("chunk_dplr_adjoint.py.j2",),
            "scan.py.j2": ("reverse_scan.py.j2", "scan_adjoint.py.j2"),
            "semiring.py.j2": ("reverse_scan.py.j2", "semiring_adjoint.py.j2"),
            "coupled_scan.py.j2": ("coupled_scan_adjoint.py.j2",)}


def emit_plan(plan) -> str:
    """The module source for a Plan (tests may hand-build Plans)."""
    spec = plan.spec
    whole = FactoringTorchRenderer(lambda n: PREFIX[n.ref.kind] + n.id)
    sequential = plan.sequential or not all(supported(g, spec) for g in plan.groups)
    prelude_names = {let.name for let in plan.prelude}
    prelude = [f"let_{let.name} = {_whole_let(whole, let, sequential)}" for let in plan.prelude]
    if sequential:
        body, families = _sequential_body(spec, prelude_names), []
        outputs = [(o.name, f"seq_{o.name}") for o in spec.outputs]
    else:
        emitter = GroupEmitter(spec, plan.reads, whole, plain_reads(plan))
        body = [line for group in plan.groups for line in emitter.lines(group)]
        families = sorted({t for g in plan.groups for t in templates(g)})
        # the derived adjoints of the families that have one, for run(..., adjoint=True)
        adjoints = [t for f in families for t in ADJOINTS.get(f, ())]
        families += [t for t in dict.fromkeys(adjoints) if t not in families]
        outputs = [(o.name, _output(whole, plan.outputs[o.name], output_dims(o)))
                   for o in spec.outputs]
    return render("torch", "module.py.j2", spec=spec, helpers=PRELUDE + render("torch", "helpers.py.j2"),
                  families=[render("torch", f) for f in families], prelude=prelude, body=body,
                  outputs=outputs, inits={s.name: _init(s) for s in spec.states},
                  scanned_size=_scanned_size(plan, sequential),
                  core_inputs={} if sequential else core_inputs(prelude + body,
                                                                 [c for _, c in outputs]))


# the kinds of core whose arguments a call-dtype input may be (run(..., call_dtype=True))
CALL_DTYPE_KINDS = ("chunk", "chunk_delta", "chunk_dplr")


def core_inputs(lines: list[str], outputs: list[str]) -> dict[str, str]:
    """The inputs the emitted code uses once, as a whole argument of a chunk-family core call
    (`cores['chunk'](...)`, ..., `CALL_DTYPE_KINDS`): `in_x`, or a constant times it, or that
    `.expand(...)`ed, alone or as the element of a list argument; name -> the core's kind. Such an input reaches the core
    unchanged, so under `run(..., call_dtype=True)` it is handed over in the call's dtype,
    uncast (module.md, "Call-dtype inputs"); any other use (the prelude, a let, an output, a
    second argument) keeps it in the compute dtype."""
    uses: dict[str, list] = {}
    for code in lines + outputs:
        try:
            tree = ast.parse(code.strip())
        except SyntaxError:
            return {}
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id.startswith("in_"):
                uses.setdefault(node.id[3:], []).append(_core_kind(node, parents))
    return {name: kinds[0].split()[0] for name, kinds in uses.items()
            if kinds[0] and (len(kinds) == 1 or _scaled_write(kinds))}


def _scaled_write(kinds: list) -> bool:
    """An input used twice or thrice, each use a whole argument of one delta-rule core call
    (the key as erase and write key), or a write scale: `_written`'s factor and the
    `write_scale` keyword of its delta-rule or chunk core call (module.md, "A write scale")."""
    delta = len(kinds) <= 3 and set(kinds) <= {"chunk_delta", "chunk_delta write_scale"}
    return delta or sorted(map(str, kinds)) == ["chunk", "chunk write_scale"]


def _core_kind(name: ast.Name, parents: dict) -> str | None:
    """The kind of the core call `name` is a whole argument of, or scaled by a constant
    (`dims["scale"] * in_q`: module.md, "Call-dtype inputs"), `<kind> write_scale` in its
    `write_scale` keyword, else None."""
    node = name
    parent = parents.get(node)
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult) and \
            _scalar(parent.right if parent.left is node else parent.left):
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Attribute) and parent.attr == "expand":
        call = parents.get(parent)
        if not (isinstance(call, ast.Call) and call.func is parent):
            return None
        node, parent = call, parents.get(call)
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and \
            parent.func.id == "_query" and parent.args and parent.args[-1] is node:
        node, parent = parent, parents.get(parent)      # `_query(raw, kind, c, x)`: c * x
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and \
            parent.func.id == "_written" and node in parent.args[2:]:
        node, parent = parent, parents.get(parent)      # `_written(raw, kind, s, x)`: s x
    if isinstance(parent, ast.List):
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.keyword) and parent.arg == "write_scale":
        call = parents.get(parent)      # `**_given(raw, kind, write_scale=[s])`
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and \
                call.func.id == "_given" and isinstance(call.args[1], ast.Constant):
            kind = call.args[1].value
            return f"{kind} write_scale" if kind in CALL_DTYPE_KINDS else None
        return None
    if not (isinstance(parent, ast.Call) and node in parent.args):
        return None
    func = parent.func
    if (isinstance(func, ast.Subscript) and isinstance(func.value, ast.Name)
            and func.value.id == "cores" and isinstance(func.slice, ast.Constant)
            and func.slice.value in CALL_DTYPE_KINDS):
        return func.slice.value
    return None


def _scalar(node) -> bool:
    """A number, or a const of the call (`dims["scale"]`)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))) or (
        isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
        and node.value.id == "dims")


def _scanned_size(plan, sequential: bool) -> str:
    """The values a step of the scanned states' history takes, as code over `dims`: the scan
    families (and the step loop) keep every step's state; the chunk families keep one a chunk."""
    chunked = set() if sequential else {g.state for g in plan.groups if g.kind in MATRIX_KINDS}
    sizes = [" * ".join([f'dims["{d}"]' for d in s.dims] or ["1"])
             for s in plan.spec.states if s.name not in chunked]
    return " + ".join(sizes) or "0"


def _whole_let(whole: TorchRenderer, let: ir.Let, full: bool) -> str:
    """A prelude let over all steps; `full` materialises it as [B, T, H, ...] (the loop slices it)."""
    if not full:
        return _constant(whole, let.value) if is_constant(let.value) else whole(let.value)
    return _expanded(whole, let.value, let.value.dims)


def _constant(whole: TorchRenderer, value: ir.Expr) -> str:
    return constant_tensor(whole(value))


def _expanded(whole: TorchRenderer, value: ir.Expr, dims: tuple[str, ...]) -> str:
    code = _constant(whole, value) if is_constant(value) else whole(value, dims)
    shape = "".join(f", dim_{d}" for d in dims)
    return f"{code}.expand(B, T, H{shape})"


def _output(whole: TorchRenderer, value: ir.Expr, dims: tuple[str, ...]) -> str:
    return _expanded(whole, value, dims)


def _sequential_body(spec: ir.Spec, prelude_names: set[str]) -> list[str]:
    def spelled(node: ir.Name) -> str:
        kind = node.ref.kind
        if kind == "input" or (kind == "let" and node.id in prelude_names):
            return f"step_{PREFIX[kind]}{node.id}"
        return {"state": "st_"}.get(kind, PREFIX.get(kind, "")) + node.id

    step = TorchRenderer(spelled)
    loop = []
    for statement in spec.body:
        if isinstance(statement, ir.Let):
            if statement.name not in prelude_names:
                loop.append(f"let_{statement.name} = {step(statement.value)}")
        elif isinstance(statement, ir.Update):
            state = spec.tensor(statement.state)
            loop.append(f"st_{state.name} = {step_value(step, statement.value, state.dims)}")
        else:
            loop.append(f"out_{statement.name}.append("
                        f"{step_value(step, statement.value, output_dims(statement))})")
    sliced = [f"in_{x.name}" for x in spec.inputs] + [f"let_{n}" for n in _ordered(spec, prelude_names)]
    text = render("torch", "sequential.py.j2", spec=spec, sliced=sliced, loop_body=loop)
    return [line[4:] for line in text.splitlines()]


def _ordered(spec: ir.Spec, names: set[str]) -> list[str]:
    return [s.name for s in spec.body if isinstance(s, ir.Let) and s.name in names]


def _init(state: ir.Tensor) -> str:
    value = float(state.init if state.init is not None else 0.0)
    return f'float("{value}")' if value in (float("inf"), float("-inf")) else repr(value)
