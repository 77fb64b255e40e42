"""The Triton backend: a fused recurrent kernel for every spec, plus the parallel family kernels
(scan, chunk, chunk_delta) that the spec's Plan allows. Expressions are rendered by render.py;
each kernel skeleton is a Jinja2 template beside a .md statement of its math.
"""
from __future__ import annotations

from seqc.templates import render as render_template

from . import families, fused
from .render import HELPERS, Constants


def plan_of(program):
    """The program's Plan, or None while the analysis cannot give one (fused kernel only)."""
    try:
        return program.analysis.plan
    except (ImportError, AttributeError, NotImplementedError):
        return None


def emit(program, plan=None) -> str:
    spec = program.spec
    if plan is None:
        plan = plan_of(program)
    constants = Constants()
    builders = [fused.FusedKernel(spec, constants)] + families.builders(plan, constants)
    contexts = [(b, b.context()) for b in builders]
    kernels = [render_template("triton", b.template, spec=spec, constants=list(constants.host),
                      output_dims=fused.output_dims, **context) for b, context in contexts]
    modes = [b.mode for b in builders]
    cores = {kind: render_template("triton", f"{kind}_core.py.j2")
             for kind in adjoint_cores(plan, modes)}
    value_dim = next((b.group.value_dim for b in builders if b.mode == "chunk_parallel"), None)
    return render_template("triton", "module.py.j2", spec=spec, modes=modes, default=modes[-1],
                  value_dim=value_dim,
                  helpers=HELPERS, kernels=kernels, constants=constants.host,
                  output_dims=fused.output_dims, cores=cores)


def adjoint_cores(plan, modes) -> list[str]:
    """The recurrence cores with adjoint kernels this module carries (chunk_core.md): `chunk`
    when the chunk kernel runs and every chunk group has one query and one write a step."""
    if "chunk" not in modes:
        return []
    groups = [g for g in plan.groups if g.kind == "chunk"]
    if all(len(g.writes) == 1 and sum(r.state == g.state for r in plan.reads) == 1
           for g in groups):
        return ["chunk"]
    return []
