"""Memory traffic of the Triton kernels, counted under the Triton interpreter (`seqc bench --io`).

Every masked load and store the interpreter executes is counted (bytes = active lanes x element
size), and the total is set against the compulsory traffic of the call: every input and param
read once, every output written once in the call's dtype and the final state in fp32. This
stands in for GPU bandwidth efficiency until a GPU is available; a ratio of 1.00 means no byte
moves twice. Targets: fused recurrent <= 1.1x, chunkwise <= 2x.

The interpreter is slow (numpy per block operation), so when it is in use the shape is capped
(B <= 1, T <= 128, H <= 2; the spec's dims are kept, they decide the value-block redundancy);
the counted traffic scales linearly in B, T and H.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

INTERPRETED_CAP = {"B": 1, "T": 128, "H": 2}


@contextmanager
def counting():
    """Count bytes of every masked load / store the Triton interpreter runs: yields a dict."""
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder

    counts = {"loaded": 0, "stored": 0, "events": []}
    load, store = InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store

    def active(kind, ptrs, mask) -> int:
        lanes = np.broadcast_to(mask.data, ptrs.data.shape)
        n = np.count_nonzero(lanes) * ptrs.get_element_ty().primitive_bitwidth // 8
        if n:       # (kind, an address it touched, bytes): which tensor moved them (measure)
            counts["events"].append((kind, int(ptrs.data[lanes].flat[0]), n))
        return n

    def counted_load(self, ptrs, mask, *args, **kwargs):
        counts["loaded"] += active("loaded", ptrs, mask)
        return load(self, ptrs, mask, *args, **kwargs)

    def counted_store(self, ptrs, value, mask, *args, **kwargs):
        counts["stored"] += active("stored", ptrs, mask)
        return store(self, ptrs, value, mask, *args, **kwargs)

    InterpreterBuilder.create_masked_load = counted_load
    InterpreterBuilder.create_masked_store = counted_store
    try:
        yield counts
    finally:
        InterpreterBuilder.create_masked_load, InterpreterBuilder.create_masked_store = load, store


def compulsory(tensors: dict, outputs: dict, final_state: dict,
               output_dtype=None) -> tuple[int, int]:
    """(bytes read, bytes written) if every tensor moved exactly once: the outputs in
    `output_dtype` (the call's; default their own dtype), the final state in fp32."""
    read = sum(t.numel() * t.element_size() for t in tensors.values())
    written = sum(t.numel() * (output_dtype or t.dtype).itemsize for t in outputs.values())
    written += sum(t.numel() * 4 for t in final_state.values())
    return read, written


def measure(program, tensors: dict, mode: str, **options) -> dict:
    """Counted and compulsory bytes of one Triton kernel call (with the final state out)."""
    kernel = program.kernel("triton", mode=mode, **options)
    with counting() as counts:
        out = kernel(**tensors, output_final_state=True)
    outputs = {k: out[k] for k in out.keys()}
    read, written = compulsory(tensors, outputs, out.final_state)
    total = counts["loaded"] + counts["stored"]
    scratch = scratch_bytes(counts["events"], [*tensors.values(), *outputs.values(),
                                               *out.final_state.values()])
    return dict(mode=mode, loaded=counts["loaded"], stored=counts["stored"], read=read,
                written=written, ratio=total / (read + written), scratch=scratch,
                ratio_io=(total - scratch) / (read + written))


def scratch_bytes(events, tensors) -> int:
    """Bytes moved to or from memory that is none of the call's tensors: buffers a mode
    allocates for itself (chunk_parallel's chunk-boundary states), counted as their own traffic."""
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors]
    return sum(n for _, address, n in events
               if not any(lo <= address < hi for lo, hi in spans))


def shape_for_counting(sizes: dict) -> dict:
    if not os.environ.get("TRITON_INTERPRET"):
        return dict(sizes)
    return {k: min(v, INTERPRETED_CAP[k]) if k in INTERPRETED_CAP else v
            for k, v in sizes.items()}


def io_report(program, shape: dict, modes=None, **options) -> str:
    """The table of counted vs compulsory bytes for every Triton mode of `program`."""
    from .inputs import random_call
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sizes = shape_for_counting(shape)
    tensors, _ = random_call(program.spec, sizes)
    module = program.kernel("triton").module
    rows = [measure(program, tensors, mode, **options) for mode in (modes or module.MODES)]
    capped = "" if sizes == shape else " (capped for the interpreter)"
    lines = [f"seqc bench --io {program.name}  shape {_shape(sizes)}{capped}",
             "| kernel | loaded | stored | of which chunk states | compulsory read | "
             "compulsory written | x compulsory | x compulsory without chunk states |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {_kb(r['loaded'])} | {_kb(r['stored'])} | "
                     f"{_kb(r['scratch'])} | {_kb(r['read'])} | {_kb(r['written'])} | "
                     f"{r['ratio']:.3f} | {r['ratio_io']:.3f} |")
    lines.append("bytes counted under the Triton interpreter; compulsory = inputs and params "
                 "read once, outputs and final state (fp32) written once; chunk states = the "
                 "chunk-boundary states a mode writes and reads back (chunk_parallel)")
    return "\n".join(lines)


def report(program, sizes: dict, backends, tensors=None) -> str:
    """The hook `seqc bench --io` calls (`tensors` are ignored: the shape may be capped)."""
    if "triton" not in backends:
        return "seqc bench --io: counts the Triton kernels; add `triton` to --backends"
    return io_report(program, sizes)


def _shape(sizes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"
