"""fla's calling convention for any spec: `prog.op(backend="auto", **options)`.

    chunk_gla = seqc.load("gla").op()
    o, ht = chunk_gla(q, k, v, g, scale=None, initial_state=h0, output_final_state=True)

The function takes the spec's inputs, then its params, positionally in declaration order (or by
name), any const by name (`scale=None` keeps the const's default), `initial_state` (a tensor when
the spec has one state, else a dict by state name), `output_final_state` and `cu_seqlens`
(packed variable-length sequences, seqc/varlen.py); it returns the
outputs in declaration order, then the final state (a tensor when the spec has one state, a dict
otherwise, None unless asked for).
"""
from __future__ import annotations

import torch


class Op:
    def __init__(self, program, kernel):
        self.program = program
        self.kernel = kernel
        spec = program.spec
        self.tensor_names = [t.name for t in spec.inputs + spec.params]
        self.const_names = [c.name for c in spec.consts]
        self.state_names = [s.name for s in spec.states]

    def __call__(self, *tensors, initial_state=None, output_final_state: bool = False,
                 cu_seqlens=None, **named):
        arguments = self._arguments(tensors, named)
        if cu_seqlens is not None:
            arguments["cu_seqlens"] = cu_seqlens
        out = self.kernel(initial_state=self._initial_state(initial_state),
                          output_final_state=output_final_state, **arguments)
        *outputs, final = tuple(out)
        return (*outputs, self._final_state(final))

    def _arguments(self, tensors: tuple, named: dict) -> dict:
        problems = []
        if len(tensors) > len(self.tensor_names):
            problems.append(f"{self.program.name} takes {len(self.tensor_names)} tensors "
                            f"({', '.join(self.tensor_names)}) but {len(tensors)} were given")
        arguments = dict(zip(self.tensor_names, tensors))
        for name, value in named.items():
            if name in arguments:
                problems.append(f"`{name}` is given both by position and by name")
            elif name == "scale" and value is None:
                continue        # fla's default: the spec's own (or no) scale
            elif name == "scale" and name not in self.tensor_names + self.const_names:
                problems.append(f"{self.program.name} has no const `scale`, so it takes no "
                                "scale; declare one in the spec (`const scale = K ** -0.5`) and "
                                "use it in the output")
            else:
                arguments[name] = value
        if problems:
            raise ValueError("bad kernel call:\n  " + "\n  ".join(problems))
        return arguments

    def _initial_state(self, initial_state):
        if not isinstance(initial_state, torch.Tensor):
            return initial_state            # None, a dict, or a mistake validate names
        if len(self.state_names) != 1:
            raise ValueError(f"bad kernel call:\n  {self.program.name} has "
                             f"{len(self.state_names)} states "
                             f"({', '.join(self.state_names) or 'none'}), so initial_state is a "
                             "dict from state name to a [B, H, ...] tensor, not a tensor")
        return {self.state_names[0]: initial_state}

    def _final_state(self, final):
        if final is not None and len(self.state_names) == 1:
            return final[self.state_names[0]]
        return final

    def __repr__(self) -> str:
        return f"<seqc.Op {self.program.name} backend={self.kernel.backend}>"
