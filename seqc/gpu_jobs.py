"""What `seqc gpu-check` compiles and what it asks of each compiled kernel.

A `Job` is one spec's emitted Triton module (and its torch module, for a training call) to be
compiled for one target in one dtype at one call shape (`spec_jobs`); a `KernelCheck` is what
one compiled kernel needs from a GPU (registers, spill bytes, shared memory, tensor-core
instructions, the dtypes its `tl.dot`s see) and the problems that keep it from fitting the
target (`problems`). The jobs run in workers (seqc/gpu_workers.py); the command and its table
are seqc/gpucheck.py.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# per-block shared memory a kernel may use (opt-in maximum), bytes
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ARCH_NAME = {80: "sm_80", 86: "sm_86", 89: "sm_89", 90: "sm_90a"}
DEFAULT_SHAPE = {"B": 4, "T": 4096, "H": 16}
DEFAULT_DIM = 128


@dataclass
class Job:
    """One worker run: a module's launches compiled for one target at one call shape."""
    label: str
    module: str
    arch: int
    dtype: str
    dims: dict[str, int]
    inputs: dict[str, list[int]]
    params: dict[str, list[int]]
    states: dict[str, list[int]]
    modes: list[str] | None = None
    cached_only: bool = False       # report kernels not in the kernel cache, compile nothing
    consts: dict[str, float] = field(default_factory=dict)   # the spec's consts, their defaults
    training_module: str | None = None  # the spec's torch module: also record a training call
    all_configs: bool = False       # every launch configuration of a list (parallel_host.md)

    def payload(self) -> dict:
        return dict(module=self.module, arch=self.arch, dtype=self.dtype, dims=self.dims,
                    consts=self.consts, inputs=self.inputs, params=self.params, states=self.states,
                    modes=self.modes, cached_only=self.cached_only,
                    training_module=self.training_module,
                    **({"all_configs": True} if self.all_configs else {}))


@dataclass
class KernelCheck:
    """What one compiled kernel needs from a GPU, and whether it fits."""
    spec: str
    arch: int
    dtype: str
    dims: dict[str, int]
    result: dict = field(default_factory=dict)

    @property
    def spill(self) -> int:
        return self.result.get("spill_store", 0) + self.result.get("spill_load", 0)

    @property
    def tensor_core(self) -> int:
        return self.result.get("mma", 0) + self.result.get("wgmma", 0)

    @property
    def dot16(self) -> str:
        dots = self.result.get("dots") or []
        if not dots:
            return "-"
        sixteen = sorted({t for d in dots for t in (d["a"], d["b"]) if t in ("bf16", "f16")})
        if sixteen:
            return "/".join(sixteen)
        return "upcast" if self.result.get("sixteen_bit_pointers") else "no"

    def problems(self) -> list[str]:
        r = self.result
        if "error" in r:
            as_is = r["error"].startswith(("compile timed out", "not measured"))
            return [r["error"] if as_is else f"does not compile: {r['error']}"]
        found = []
        if self.spill:
            found.append(f"spills {self.spill} B (stores {r['spill_store']} + loads "
                         f"{r['spill_load']})")
        limit = SHARED_LIMIT[self.arch]
        if r["shared"] > limit:
            found.append(f"needs {kb(r['shared'])} KB shared memory, over {ARCH_NAME[self.arch]}'s "
                         f"{kb(limit)} KB")
        if self.dot16 != "-" and self.dot16 != "no" and not self.tensor_core:
            how = ("16-bit operands" if self.dot16 != "upcast" else
                   "16-bit inputs upcast to fp32 (" + ", ".join(sorted(
                       {d['precision'] for d in r['dots']})) + ")")
            found.append(f"dots {how} with no tensor-core instruction")
        return found

    def to_json(self) -> dict:
        r = {k: v for k, v in self.result.items() if k != "dots"}
        return dict(spec=self.spec, arch=ARCH_NAME[self.arch], dtype=self.dtype,
                    dims=self.dims, **r, spill=self.spill if "error" not in r else None,
                    tensor_core=self.tensor_core, dot16=self.dot16,
                    dots=self.result.get("dots", []), problems=self.problems(),
                    ok=not self.problems())


def kb(n: int) -> str:
    return f"{n / 1024:.0f}" if n % 1024 == 0 else f"{n / 1024:.1f}"

def spec_jobs(program, dims: dict[str, int], shape: dict[str, int], archs, dtypes) -> list[Job]:
    """The jobs of one spec: its emitted Triton module, for every target and dtype."""
    from . import ir
    from .consts import const_values
    spec = program.spec
    sizes = dict(shape, **{d.name: dims.get(d.name, dims["*"]) for d in spec.dims})
    lead = {ir.TensorKind.INPUT: [sizes["B"], sizes["T"], sizes["H"]]}

    def shapes(tensors, first):
        return {t.name: first + [sizes[d] for d in t.dims] for t in tensors}

    module = emitted_module(program.emit("triton"))
    training = emitted_module(program.emit("torch"))
    consts = const_values(spec, sizes, {}, [])
    return [Job(program.name, module, arch, dtype, sizes,
                shapes(spec.inputs, lead[ir.TensorKind.INPUT]), shapes(spec.params, [sizes["H"]]),
                shapes(spec.states, [sizes["B"], sizes["H"]]), consts=consts,
                training_module=training)
            for arch in archs for dtype in dtypes]


def emitted_module(code: str) -> str:
    """The path of a file holding `code` (written once, under the seqc cache dir)."""
    from .cache import cache_dir, write_atomic
    name = hashlib.sha256(code.encode("utf-8")).hexdigest()[:32] + ".py"
    for directory in (cache_dir() / "gpu-check" / "modules",
                      Path(tempfile.gettempdir()) / f"seqc-gpu-check-{os.getuid()}"):
        path = directory / name
        try:
            if not path.exists() or path.read_text(encoding="utf-8") != code:
                write_atomic(path, code)
            return str(path)
        except OSError:
            continue
    raise OSError("no writable directory for the emitted modules (set SEQC_CACHE_DIR)")
