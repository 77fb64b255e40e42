"""Test-wide setup.

There is no GPU here, so the Triton backend runs under the interpreter. Triton's standard library
(tl.sum, tl.cumsum, ...) is decorated when triton is first imported, and fla-core imports triton
as soon as an oracle module loads it: TRITON_INTERPRET must be set before any test module is
collected, i.e. here.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ["TRITON_INTERPRET"] == "1":
    import fast_interpreter  # noqa: E402
    fast_interpreter.install()  # the same results, less interpreter bookkeeping

from hypothesis import settings  # noqa: E402

# Every property test is deterministic in CI: the same examples on every run.
settings.register_profile("seqc", derandomize=True, database=None)
settings.load_profile("seqc")


def _triton_kernels_on_cuda():
    """SEQC_TEST_DEVICE=cuda (scripts/gpu.sh, with TRITON_INTERPRET=0): the tests build CPU
    tensors; every Triton kernel call moves them to the GPU and its results back, so that the
    Triton tests run the compiled kernels, not the interpreter."""
    import torch

    from seqc.kernel import Kernel, KernelOutput
    call = Kernel.__call__

    def on(device, tensors):
        return None if tensors is None else {n: t.to(device) for n, t in tensors.items()}

    def on_cuda(self, initial_state=None, output_final_state=False, **tensors):
        if self.backend != "triton":
            return call(self, initial_state, output_final_state, **tensors)
        # the tests compare fp32 at 1e-4: tf32 dots (chunk_parallel's GPU default) round
        # operands to 10 bits, so the GPU run asks for "ieee" unless a test chose a precision
        self.options = {"precision": "ieee", **self.options}
        out = call(self, on("cuda", initial_state), output_final_state, **on("cuda", tensors))
        torch.cuda.synchronize()
        return KernelOutput(on("cpu", {n: out[n] for n in out.keys()}),
                            on("cpu", out.final_state))

    Kernel.__call__ = on_cuda


if os.environ.get("SEQC_TEST_DEVICE") == "cuda":
    _triton_kernels_on_cuda()
