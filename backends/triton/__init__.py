"""The Triton backend: a fused recurrent kernel for every spec, plus the parallel family kernels
(scan, chunk, chunk_delta) that the spec's Plan allows. Expressions are rendered by render.py;
each kernel skeleton is a Jinja2 template beside a .md statement of its math.
"""
from __future__ import annotations

from seqc.templates import render as render_template

from . import families, fused, fused_backward
from .render import Constants, helpers

# the multi-kernel forms a module runs instead of its single-kernel default when that would
# launch too few programs (module.py.j2, `_choose_mode`)
PARALLEL_MODES = ("chunk_parallel", "chunk_delta_parallel", "chunk_dplr_parallel", "scan_parallel")
# the modes whose kernels store the outputs in the call's dtype (bf16 / fp16 when the inputs are;
# states and accumulators stay fp32): every mode; one left out would store fp32, which
# seqc/kernel.py casts after the call (docs/backends.md, "Numerics")
CALL_DTYPE_OUTPUTS = ("fused_recurrent", "scan", "chunk", "chunk_delta", "chunk_dplr",
                      "scan_parallel", "chunk_parallel", "chunk_delta_parallel",
                      "chunk_dplr_parallel")


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
    backward = fused_backward.backward_builder(spec, constants, builders[0].split)
    contexts = [(b, b.context()) for b in builders + ([backward] if backward else [])]
    kernels = [render_template("triton", b.template, spec=spec, constants=list(constants.host),
                      output_dims=fused.output_dims, **context) for b, context in contexts]
    modes = [b.mode for b in builders]
    kinds = adjoint_cores(plan, modes)
    cores = {kind: render_template("triton", f"{kind}_core.py.j2") for kind in kinds}
    common = (render_template("triton", "core_common.py.j2")
              if {"chunk", "chunk_delta", "chunk_dplr"} & set(kinds) else "")     # their shared helpers
    parallel = next((b for b in builders if b.mode in PARALLEL_MODES), None)
    return render_template("triton", "module.py.j2", spec=spec, modes=modes, default=modes[-1],
                  value_dim=parallel and getattr(getattr(parallel, "group", None), "value_dim", None),
                  parallel_mode=parallel and parallel.mode,
                  helpers=helpers(spec), kernels=kernels, constants=constants.host,
                  output_dims=fused.output_dims, cores=cores, core_helpers=common,
                  fused_backward=backward is not None,
                  call_dtype_outputs=[b.mode for b in builders if b.mode in CALL_DTYPE_OUTPUTS],
                  not_offered=families.not_offered(plan))


def adjoint_cores(plan, modes) -> list[str]:
    """The recurrence cores with adjoint kernels this module carries, for the torch module's
    groups to run on in training: `chunk` (chunk_core.md) when the chunk kernel runs and every
    chunk group has one query and one write a step, and then `chunk_parallel`
    (chunk_parallel_core.md, the `chunk_parallel` mode's) when that mode runs; `scan`
    (scan_core.md) when the Plan has an elementwise (uncoupled) scan group or a semiring group
    and a parallel kernel runs; `chunk_delta` (chunk_delta_core.md) when the chunk_delta kernel
    runs and every delta group has one query (deltanet, gated_deltanet, kda; deltaproduct's delta
    steps run as the delta rule over the steps), and then `chunk_delta_parallel`
    (chunk_delta_parallel_core.md, the `chunk_delta_parallel` mode's) when that mode runs; `chunk_dplr` (chunk_dplr_core.md) when the
    chunk_dplr kernel runs and every diagonal-plus-low-rank group has one query and one write a
    token (rwkv7, comba), and then `chunk_dplr_parallel` (chunk_dplr_parallel_core.md, the
    `chunk_dplr_parallel` mode's) when that mode runs; `semiring_scan` (semiring_scan_core.md, with `scan`) when the Plan has a
    semiring group (logsumexp, maxplus) and a parallel kernel runs; `coupled_scan`
    (coupled_scan_core.md, with `scan`, the mode such a Plan runs in) when it has a coupled scan
    group."""
    if plan is None or modes == ["fused_recurrent"]:
        return []
    cores = []

    def add_with_parallel_core(kind, one_write):
        """`kind`'s core when the mode runs and every `kind` group's state is read once (and,
        `one_write`, written by one write), then its parallel form's training core
        (`kind`_parallel_core.md) when that mode runs."""
        if kind in modes and all(
                (not one_write or len(g.writes) == 1)
                and sum(r.state == g.state for r in plan.reads) == 1
                for g in plan.groups if g.kind == kind):
            cores.append(kind)
            if f"{kind}_parallel" in modes:
                cores.append(f"{kind}_parallel")

    add_with_parallel_core("chunk", one_write=True)
    semirings = any(g.kind == "semiring" for g in plan.groups)
    coupled = any(g.kind == "scan" and g.coupling for g in plan.groups)
    if semirings or coupled or any(g.kind == "scan" and not g.coupling for g in plan.groups):
        cores.append("scan")        # the semiring core composes with the scan core's maps
    add_with_parallel_core("chunk_delta", one_write=False)
    add_with_parallel_core("chunk_dplr", one_write=True)
    if semirings:
        cores.append("semiring_scan")
    if coupled:
        cores.append("coupled_scan")
    return cores
