"""Packed variable-length batches, fla's `cu_seqlens`.

`cu_seqlens` (int32 or int64, `[N + 1]`, `0 = c_0 < c_1 < ... < c_N = total_T`) packs N sequences
along time: inputs are `[1, total_T, H, ...]`, sequence i being steps `c_i .. c_{i+1} - 1`;
`initial_state` and the final state are `[N, H, ...]`. Each sequence starts from its own initial
state, exactly as if it were called alone: here it is. The sequences are grouped by length and
each group runs as one batch (B = the group's size) of the same kernel, so the states reset at
every boundary by construction; the outputs are packed back in order. Params and consts are
shared by all sequences. Differentiable, as the kernel is.
"""
from __future__ import annotations

import torch

from . import ir


def run_packed(kernel, arguments: dict, cu_seqlens, initial_state, output_final_state: bool):
    """`kernel(initial_state=, output_final_state=, **arguments)` runs one batch; the result is
    a KernelOutput with outputs packed `[1, total_T, H, ...]` and final states `[N, H, ...]`."""
    from .kernel import KernelOutput
    spec = kernel.program.spec
    outputs, final = _run(kernel, spec, arguments, cu_seqlens, initial_state, output_final_state)
    return KernelOutput(outputs, final)


def _run(call, spec: ir.Spec, arguments: dict, cu_seqlens, initial_state,
         output_final_state: bool):
    bounds = _bounds(spec, arguments, cu_seqlens, initial_state)
    inputs = {t.name for t in spec.inputs}
    by_length: dict[int, list[int]] = {}
    for i, (start, end) in enumerate(bounds):
        by_length.setdefault(end - start, []).append(i)
    pieces: list[tuple[dict, dict | None]] = [None] * len(bounds)   # type: ignore[list-item]
    for members in by_length.values():
        batch = {name: (torch.cat([value[:, bounds[i][0]:bounds[i][1]] for i in members])
                        if name in inputs else value)
                 for name, value in arguments.items()}
        init = {name: state[members] for name, state in initial_state.items()} \
            if isinstance(initial_state, dict) else initial_state   # else the call says why
        out = call(initial_state=init, output_final_state=output_final_state, **batch)
        for row, i in enumerate(members):
            final = out.final_state
            pieces[i] = ({name: out[name][row:row + 1] for name in out.keys()},
                         None if final is None else
                         {name: state[row:row + 1] for name, state in final.items()})
    outputs = {o.name: torch.cat([piece[0][o.name] for piece in pieces], 1) for o in spec.outputs}
    if not output_final_state:
        return outputs, None
    return outputs, {s.name: torch.cat([piece[1][s.name] for piece in pieces])
                     for s in spec.states}


def _bounds(spec: ir.Spec, arguments: dict, cu_seqlens, initial_state) -> list[tuple[int, int]]:
    """The (start, end) steps of each sequence; every problem of the packing in one ValueError."""
    problems: list[str] = []
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or \
            cu_seqlens.dtype not in (torch.int32, torch.int64) or len(cu_seqlens) < 2:
        shown = (f"a {cu_seqlens.dtype} tensor of shape {list(cu_seqlens.shape)}"
                 if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__)
        _raise([f"cu_seqlens must be a 1-D int32 or int64 tensor [N + 1] of sequence starts "
                f"(0, ..., total_T), not {shown}"])
    offsets = [int(c) for c in cu_seqlens.tolist()]
    if offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        problems.append(f"cu_seqlens must start at 0 and increase strictly (every sequence has "
                        f"at least one step), not {offsets}")
    for tensor in spec.inputs:
        value = arguments.get(tensor.name)
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue                      # the kernel call names this mistake
        if value.shape[0] != 1 or value.shape[1] != offsets[-1]:
            problems.append(f"with cu_seqlens, input `{tensor.name}` is packed [1, total_T, H, ...]"
                            f" = [1, {offsets[-1]}, ...], but has shape {list(value.shape)}")
    N = len(offsets) - 1
    for name, state in (initial_state if isinstance(initial_state, dict) else {}).items():
        if isinstance(state, torch.Tensor) and (state.dim() < 1 or state.shape[0] != N):
            problems.append(f"with cu_seqlens, initial state `{name}` is [N, H, ...] with N = {N} "
                            f"sequences, but has shape {list(state.shape)}")
    _raise(problems)
    return list(zip(offsets, offsets[1:]))


def _raise(problems: list[str]) -> None:
    if problems:
        raise ValueError("bad kernel call:\n  " + "\n  ".join(problems))
