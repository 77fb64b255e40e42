"""The Python API: `seqc.load(name_or_path)`, `seqc.compile(source)` -> Program."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from . import ir
from .check import Checked, check
from .parse import parse
from .source import read_spec


class Program:
    """A checked spec; `.analysis` says what may run in parallel, `.kernel()` builds a kernel."""

    def __init__(self, checked: Checked, source: str):
        self.checked = checked
        self.source = source

    @property
    def spec(self) -> ir.Spec:
        return self.checked.spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def warnings(self):
        return self.checked.warnings

    @cached_property
    def analysis(self):
        from .analysis import analyse
        return analyse(self.checked)

    def emit(self, backend: str = "reference") -> str:
        """The standalone Python module a backend emits for this spec."""
        from .emit import emit
        return emit(self, backend)

    def kernel(self, backend: str = "reference", context_parallel: bool = False, group=None,
               **options):
        """A callable running this spec: fn(**inputs, **params, **consts, initial_state=,
        output_final_state=). `context_parallel=True`: each rank of the torch.distributed
        `group` (None: the default group) passes its time shard (seqc/context_parallel.py)."""
        from .kernel import build_kernel
        kernel = build_kernel(self, backend, **options)
        if not context_parallel:
            if group is not None:
                raise ValueError("group= is the process group of context_parallel=True")
            return kernel
        from .context_parallel import ContextParallelKernel
        return ContextParallelKernel(self, kernel, group)

    def op(self, backend: str = "auto", **options):
        """A function with fla's call: fn(*inputs, *params, scale=None, initial_state=None,
        output_final_state=False) -> (outputs..., final_state); see seqc/op.py."""
        from .op import Op
        return Op(self, self.kernel(backend, **options))

    def __repr__(self) -> str:
        return f"<seqc.Program {self.name}>"


def compile(source: str, filename: str = "<spec>") -> Program:  # noqa: A001 - the API's name
    """Parse and check spec source text; raise SpecError with every error of it."""
    return Program(check(parse(source, filename)), source)


def load(name_or_path: str | Path) -> Program:
    """A stdlib spec by name (`seqc.load("gla")`) or a .seq file by path."""
    source, shown = read_spec(name_or_path)
    return compile(source, shown)
