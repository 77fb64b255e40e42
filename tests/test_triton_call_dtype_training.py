"""A 16-bit training call on the Triton cores (seqc/autograd.py, `run(..., call_dtype=True)`;
backends/torch/module.md, "Call-dtype inputs"): the inputs that reach a chunk-family core
unchanged (no prelude operation but a constant factor, simple_gla's `scale * q`) are handed to
it in the call's dtype, not copied to fp32 by the torch side; the cores load them as they are,
compute in fp32 and return their gradients in that dtype. Inputs with another prelude operation
(gated_deltanet's normalised keys) stay fp32.

Under the interpreter, tiny shapes: which inputs the emitter passes through, the dtypes the core
receives, gradients of a bf16 call against an fp32 call on the same (bf16) values, and the bytes
of the torch operations of a bf16 training step (benchmarks/fla_traffic.py `TorchBytes`).
"""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import seqc  # noqa: E402
from seqc.backends.torch import core_inputs  # noqa: E402
from seqc.bench_io import compulsory  # noqa: E402
from seqc.inputs import random_call  # noqa: E402

pytestmark = pytest.mark.triton


def slab_lines(name):
    code = seqc.load(name).emit("torch")
    body = code[code.index("def _run_slab"):].splitlines()
    return [line for line in body if line.startswith("    in_")]


@pytest.mark.parametrize("name, raw", [
    ("simple_gla", {"q": "chunk", "k": "chunk", "v": "chunk", "g": "chunk"}),   # scale * q
    ("gated_deltanet", {"q": "chunk_delta", "k": "chunk_delta", "v": "chunk_delta",
                        "g": "chunk_delta", "beta": "chunk_delta"}),   # beta as `write_scale`
    ("deltaproduct", dict.fromkeys(["q", "k1", "k2", "v1", "v2", "beta1", "beta2"],
                                   "chunk_delta")),     # two steps a token, each beta handed
    ("rwkv7", {"r": "chunk_dplr", "k": "chunk_dplr", "v": "chunk_dplr"}),  # kk, a, g (twice)
    ("hgrn", {})])                                                 # a scan: through _scan_roles
def test_the_emitter_passes_the_core_arguments_through(name, raw):
    lines = slab_lines(name)
    passed = {line.split()[0][3:]: line.split('"')[3] for line in lines if " in raw " in line}
    assert passed == raw
    assert all(line.endswith(".to(compute)") for line in lines)


def test_core_inputs_needs_one_whole_argument():
    call = "reads, final_S = cores['chunk']([{}], [in_k.expand(B, T, H, dim_K)], [in_v], in_g, s, c)"
    assert core_inputs([call.format("in_q")], []) == {"q": "chunk", "k": "chunk", "v": "chunk",
                                                      "g": "chunk"}
    assert core_inputs([call.format('dims["scale"] * in_q')], []) == {
        "q": "chunk", "k": "chunk", "v": "chunk", "g": "chunk"}
    assert core_inputs([call.format("in_q * in_v")], []) == {"k": "chunk", "g": "chunk"}
    assert core_inputs([call.format("torch.exp(in_q)")], []) == {"k": "chunk", "v": "chunk",
                                                                 "g": "chunk"}
    # a second use, in a let, an output or another argument, keeps it in the compute dtype
    assert core_inputs([call.format("in_k")], []) == {"v": "chunk", "g": "chunk"}
    assert core_inputs([call.format("in_q")], ["in_v * rd_S"]) == {"q": "chunk", "k": "chunk",
                                                                   "g": "chunk"}
    assert core_inputs([call.format("in_q").replace("cores['chunk']", "cores['scan']")], []) == {}
    # a delta rule's key and write scale, each twice in its core call (module.md, "A write
    # scale"); a third use elsewhere keeps them fp32
    delta = ("reads, final_S = cores['chunk_delta']([in_q], [in_k], [_written(raw, "
             "'chunk_delta', in_beta.expand(B, T, H), in_k)], [in_v], None, s, c, "
             "**_given(raw, 'chunk_delta', write_scale=[in_beta.expand(B, T, H)]))")
    assert core_inputs([delta], []) == dict.fromkeys("qkv", "chunk_delta") | {
        "beta": "chunk_delta"}
    assert core_inputs([delta], ["in_beta * rd_S"]) == dict.fromkeys("qkv", "chunk_delta")
    # a chunk key's write factor (mamba2's dt): raw unless also read elsewhere (its decay)
    chunk = ("reads, final_S = cores['chunk']([in_q], [_written(raw, 'chunk', in_s, in_k)], "
             "[in_v], {}, s, c, **_given(raw, 'chunk', write_scale=[in_s]))")
    assert core_inputs([chunk.format("None")], []) == dict.fromkeys("qkvs", "chunk")
    assert core_inputs([chunk.format("in_s * par_A")], []) == dict.fromkeys("qkv", "chunk")


def sizes_of(program, T=32, dims=16):
    return dict(B=1, T=T, H=2, **{d.name: dims for d in program.spec.dims})


def test_the_core_receives_the_call_dtype(monkeypatch):
    """simple_gla at bf16: q (unscaled: the core takes `scale` as `query_scale`), k, v, g reach
    chunk_parallel_core in bf16, the state in fp32; the gradients come back in bf16; an fp32
    call hands it fp32 throughout."""
    program = seqc.load("simple_gla")
    kernel = program.kernel("triton")
    own = kernel.module.MODE_CORES["chunk_parallel"]
    core, seen, scales = own["chunk_core"], [], []

    def recorded(queries, keys, values, log_decay, state, chunk_size, **options):
        seen.append([t.dtype for t in (queries[0], keys[0], values[0], log_decay, state)])
        scales.append(options["query_scale"])
        return core(queries, keys, values, log_decay, state, chunk_size, **options)
    monkeypatch.setitem(own, "chunk_core", recorded)
    for dtype in (torch.bfloat16, torch.float32):
        tensors, _ = random_call(program.spec, sizes_of(program), dtype=dtype, seed=3)
        x = {n: t.requires_grad_() for n, t in tensors.items()}
        kernel(**x)["o"].float().sum().backward()
        assert {x[n].grad.dtype for n in x} == {dtype}
    bf16, f32 = torch.bfloat16, torch.float32
    assert seen == [[bf16, bf16, bf16, bf16, f32], [f32] * 5]
    assert scales == [16 ** -0.5] * 2


@pytest.mark.parametrize("name", ["simple_gla", "gla", "gated_deltanet", "rwkv7", "comba", "kda",
                                  "mamba2", "mlstm"])
def test_bf16_gradients_match_the_fp32_call(name):
    """Within bf16 rounding of the fp32 call's on the same bf16 values (every input's gradient,
    those the cores store in bf16 and those cast from fp32)."""
    program = seqc.load(name)
    tensors, _ = random_call(program.spec, sizes_of(program, T=40), dtype=torch.float32, seed=5)
    tensors = {n: t.to(torch.bfloat16) for n, t in tensors.items()}
    output = program.spec.outputs[0].name
    grads = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = {n: t.detach().to(dtype).requires_grad_() for n, t in tensors.items()}
        out = program.kernel("triton")(**x)[output]
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out.float() * weight).sum().backward()
        grads[dtype] = {n: t.grad for n, t in x.items()}
    for n, want in grads[torch.float32].items():
        got = grads[torch.bfloat16][n]
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max(), n


@pytest.mark.parametrize("name, bound", [("simple_gla", 3.3), ("gated_deltanet", 3.9),
                                         ("deltanet", 3.9), ("kda", 4.3), ("comba", 4.3),
                                         ("deltaproduct", 8.9), ("mamba2", 3.2)])
def test_bf16_training_step_torch_bytes(name, bound):
    """The torch operations of a bf16 training step (T=64, dims 16) move at most `bound` times
    the call's compulsory bytes. simple_gla 3.11x: the loss, the incoming gradient times
    `scale` (the core's backward), the scalar gate's gradient sum and its fp32 copy (3.60x with
    `scale * q` and its backward in bf16 on the torch side; 5.82x while the core stored its read
    in fp32, cast to bf16 after, and took its gradient cast to fp32; 13.45x with every input
    copied to fp32). gated_deltanet 3.78x, deltanet 3.74x, kda 4.19x with `beta` handed to the
    core as `write_scale` (module.md, "A write scale") and `w = beta k` formed in its per-chunk
    kernel (4.28x, 4.25x, 4.60x with that multiply on the torch side; 5.73x, 5.73x, 4.60x
    before the fused keys kernel stored dq and dv in bf16), comba 4.21x (its write key apart
    from its erase key folded by the kernels; 6.36x scaled by the core's wrapper in bf16 under
    autograd), deltaproduct 8.82x (each step's beta handed, the steps' keys interleaved once in
    bf16; 23.19x with k1, k2, beta1, beta2 cast to fp32 and `beta * k` formed and
    differentiated on the torch side); 13.79x, 13.91x, 11.16x, 11.10x with k and beta cast to
    fp32, `beta * k` and its backward on the torch side (14.28x with `scale * q`, 16.46x with
    the fp32 read, gated_deltanet). mamba2 2.96x with `dt` handed to the core as the key's
    `write_scale` (9.20x with B cast to fp32, `dt * B` and its backward on the torch side)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fla_traffic.py"
    spec = importlib.util.spec_from_file_location("fla_traffic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    program = seqc.load(name)
    tensors, _ = random_call(program.spec, sizes_of(program, T=64), dtype=torch.bfloat16, seed=5)
    x = {n: t.clone().requires_grad_() for n, t in tensors.items()}
    kernel = program.kernel("triton")
    output = program.spec.outputs[0].name
    out = kernel(**x)[output]
    read, written = compulsory(tensors, {output: out}, {})
    step = module.TorchBytes()
    with step.counting():
        out = kernel(**x)[output]
        (out * torch.ones_like(out)).sum().backward()
    assert step.bytes <= bound * (read + written)


@pytest.mark.parametrize("name, plain", [("simple_gla", True), ("gated_deltanet", True),
                                         ("rwkv7", True), ("mlstm", False), ("rwkv6", False)])
def test_a_read_that_is_a_whole_output_is_stored_in_the_call_dtype(name, plain):
    """The core call asks for its reads in the call's dtype when each is a whole output
    (`plain_reads`): not mlstm's (its reads divided), nor rwkv6's (a previous-state read,
    moved one step)."""
    code = seqc.load(name).emit("torch")
    assert ("read_dtype=first.dtype" in code) == plain


def test_the_core_stores_the_read_in_the_call_dtype(monkeypatch):
    """gated_deltanet at bf16: chunk_delta_parallel_core returns its read in bf16 (no fp32 read
    cast after it), and the gradient it is handed is bf16; at fp32, fp32."""
    program = seqc.load("gated_deltanet")
    kernel = program.kernel("triton")
    own = kernel.module.MODE_CORES["chunk_delta_parallel"]
    core, seen = own["chunk_delta_core"], []

    def recorded(*args, **options):
        reads, final = core(*args, **options)
        seen.append(reads[0].dtype)
        reads[0].register_hook(lambda grad: seen.append(grad.dtype))
        return reads, final
    monkeypatch.setitem(own, "chunk_delta_core", recorded)
    for dtype in (torch.bfloat16, torch.float32):
        tensors, _ = random_call(program.spec, sizes_of(program), dtype=dtype, seed=3)
        x = {n: t.requires_grad_() for n, t in tensors.items()}
        kernel(**x)["o"].float().sum().backward()
    assert seen == [torch.bfloat16] * 2 + [torch.float32] * 2


@pytest.mark.parametrize("name", ["simple_gla", "gated_deltanet"])
def test_the_torch_forms_take_the_call_dtype_keywords(name):
    """The module's own chunk forms given as the cores under `call_dtype` (their query handed
    unscaled, `query_scale` and `read_dtype` as keywords: `_call_dtype_form`) compute what the
    plain call does, fp64, outputs and gradients."""
    program = seqc.load(name)
    module = program.kernel("torch").module
    kind = "chunk_delta" if name == "gated_deltanet" else "chunk"
    tensors, _ = random_call(program.spec, sizes_of(program), dtype=torch.float64, seed=7)
    dims = {**sizes_of(program), "scale": 0.3}
    results = []
    for options in ({}, {f"{kind}_core": getattr(module, f"_{kind}"), "call_dtype": True}):
        x = {n: t.clone().requires_grad_() for n, t in tensors.items()}
        out = module.run(x, {}, dims, **options)[0]["o"]
        out.sum().backward()
        results.append([out.detach()] + [x[n].grad for n in sorted(x)])
    for got, want in zip(*results):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("K, keywise", [(16, False), (16, True), (80, False), (144, False)])
def test_the_parallel_core_scales_the_query(K, keywise):
    """chunk_parallel_core with `query_scale` s on q is the core on s q (fp32: outputs and
    every gradient, the output's accumulator scaled in the kernel; the backward kernels run on
    the unscaled do and dS_T / s and scale every gradient they store), in each backward form:
    fused (K = 16), fused key-wise, fused wide (80), dv and dq/dk kernels (144)."""
    program = seqc.load("gla" if keywise else "simple_gla")
    core = program.kernel("triton").module.MODE_CORES["chunk_parallel"]["chunk_core"]
    generator = torch.Generator().manual_seed(11)
    B, T, H = 1, 40, 2
    q, k, v = (torch.randn(B, T, H, K, generator=generator) for _ in range(3))
    g = -torch.rand(*((B, T, H, K) if keywise else (B, T, H)), generator=generator)
    s0 = torch.randn(B, H, K, K, generator=generator)
    weight = torch.randn(B, H, T, K, generator=generator)
    runs = []
    for scaled in (False, True):
        x = [t.clone().requires_grad_() for t in (q, k, v, g, s0)]
        query = x[0] if scaled else 0.3 * x[0]
        reads, final = core([query], [x[1]], [x[2]], x[3], x[4], 16, precision="ieee",
                            **({"query_scale": 0.3} if scaled else {}))
        ((reads[0] * weight).sum() + final.sum()).backward()
        runs.append([reads[0].detach(), final.detach()] + [t.grad for t in x])
    for got, want in zip(*runs):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_delta_step_hands_its_beta_to_the_core(monkeypatch):
    """gated_deltanet and comba at bf16: chunk_delta_parallel_core receives beta as
    `write_scale` and the unscaled write key in bf16 (gated_deltanet's the erase key itself:
    no `beta * k` formed on the torch side), and beta's gradient comes back in bf16."""
    for name, write in (("gated_deltanet", "k"), ("comba", "k")):
        program = seqc.load(name)
        kernel = program.kernel("triton")
        own = kernel.module.MODE_CORES["chunk_delta_parallel"]
        core, seen = own["chunk_delta_core"], []

        def recorded(queries, keys, write_keys, values, log_decay, state, chunk_size, **options):
            seen.append((keys[0], write_keys[0], options.get("write_scale")))
            return core(queries, keys, write_keys, values, log_decay, state, chunk_size,
                        **options)
        monkeypatch.setitem(own, "chunk_delta_core", recorded)
        tensors, _ = random_call(program.spec, sizes_of(program), dtype=torch.bfloat16, seed=3)
        x = {n: t.requires_grad_() for n, t in tensors.items()}
        kernel(**x)["o"].float().sum().backward()
        ((key, written, scale),) = seen
        assert written.dtype == key.dtype == torch.bfloat16
        assert written.data_ptr() == x[write].data_ptr()
        assert (written.data_ptr() == key.data_ptr()) == (name == "gated_deltanet")
        assert len(scale) == 1 and scale[0].dtype == torch.bfloat16
        assert scale[0].data_ptr() == x["beta"].data_ptr()
        assert x["beta"].grad.dtype == torch.bfloat16


def test_each_delta_step_hands_its_beta_to_the_core(monkeypatch):
    """deltaproduct at bf16 (two delta steps a token): chunk_delta_parallel_core receives each
    step's beta as `write_scale` and the steps' keys themselves, uncast, as their write keys;
    its backward keys kernel folds the write scale (WRITE_SCALE 2 over the interleaved rows),
    and both betas' gradients come back in bf16."""
    program = seqc.load("deltaproduct")
    kernel = program.kernel("triton")
    module = kernel.module
    own = module.MODE_CORES["chunk_delta_parallel"]
    core, seen, folds = own["chunk_delta_core"], [], []

    def recorded(queries, keys, write_keys, values, log_decay, state, chunk_size, **options):
        seen.append((keys, write_keys, options.get("write_scale")))
        return core(queries, keys, write_keys, values, log_decay, state, chunk_size, **options)
    launch = module._cdp_bwd_keys_kernel

    class Keys:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                folds.append(args[18])      # WRITE_SCALE
                return launch[grid](*args, **kwargs)
            return run
    monkeypatch.setitem(own, "chunk_delta_core", recorded)
    monkeypatch.setattr(module, "_cdp_bwd_keys_kernel", Keys())
    tensors, _ = random_call(program.spec, sizes_of(program), dtype=torch.bfloat16, seed=3)
    x = {n: t.requires_grad_() for n, t in tensors.items()}
    kernel(**x)["o"].float().sum().backward()
    ((keys, written, scale),) = seen
    for j, (key, write) in enumerate(zip(keys, written), 1):
        assert key.dtype == write.dtype == torch.bfloat16
        assert key.data_ptr() == write.data_ptr() == x[f"k{j}"].data_ptr()
        assert scale[j - 1].dtype == torch.bfloat16
        assert scale[j - 1].data_ptr() == x[f"beta{j}"].data_ptr()
        assert x[f"beta{j}"].grad.dtype == torch.bfloat16
    assert folds == [2]


@pytest.mark.parametrize("K, keywise, same", [(16, False, True), (16, False, False),
                                              (16, True, True), (16, True, False),
                                              (128, False, True), (128, False, False)])
def test_the_parallel_core_scales_the_write_key(K, keywise, same):
    """chunk_delta_parallel_core with `write_scale` beta on the write key r is the core on
    beta r (fp32: outputs and every gradient): r the erase key itself (dk + beta dw and dbeta
    in the kernel) or another (comba: w formed from r and beta, beta dw and dbeta in the
    kernel), through the fused keys kernel (K = 16, a scalar gate), the WY kernel (a key-wise
    gate; K = 128)."""
    program = seqc.load("gated_deltanet")
    core = program.kernel("triton").module.MODE_CORES["chunk_delta_parallel"]["chunk_delta_core"]
    generator = torch.Generator().manual_seed(13)
    B, T, H, V = 1, 40, 2, 16
    q, k, r = (torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=generator), dim=-1)
               for _ in range(3))
    v = torch.randn(B, T, H, V, generator=generator)
    g = -0.1 * torch.rand((B, T, H, K) if keywise else (B, T, H), generator=generator)
    beta = torch.rand(B, T, H, generator=generator)
    s0 = torch.randn(B, H, K, V, generator=generator)
    weight = torch.randn(B, H, T, V, generator=generator)
    runs = []
    for scaled in (False, True):
        x = [t.clone().requires_grad_() for t in (q, k, r, v, g, beta, s0)]
        erase, write = x[1], (x[1] if same else x[2])
        written = write if scaled else x[5][..., None] * write
        reads, final = core([x[0]], [erase], [written], [x[3]], x[4], x[6], 16,
                            precision="ieee", **({"write_scale": [x[5]]} if scaled else {}))
        ((reads[0] * weight).sum() + final.sum()).backward()
        runs.append([reads[0].detach(), final.detach()]
                    + [torch.zeros(()) if t.grad is None else t.grad for t in x])
    for got, want in zip(*runs):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("K", [16, 128])
def test_the_parallel_core_scales_each_steps_write_key(K):
    """chunk_delta_parallel_core on two delta steps a token (deltaproduct) with `write_scale`
    [b1, b2] on the keys themselves is the core on [b1 k1, b2 k2] (fp32: outputs and every
    gradient; the steps' keys and factors interleaved once, dk + beta dw and dbeta in the
    kernels): the fused keys kernel (K = 16), the WY kernel (K = 128)."""
    program = seqc.load("deltaproduct")
    core = program.kernel("triton").module.MODE_CORES["chunk_delta_parallel"]["chunk_delta_core"]
    generator = torch.Generator().manual_seed(17)
    B, T, H, V = 1, 24, 2, 16
    q, k1, k2 = (torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=generator),
                                               dim=-1) for _ in range(3))
    v1, v2 = (torch.randn(B, T, H, V, generator=generator) for _ in range(2))
    b1, b2 = (torch.rand(B, T, H, generator=generator) for _ in range(2))
    s0 = torch.randn(B, H, K, V, generator=generator)
    weight = torch.randn(B, H, T, V, generator=generator)
    runs = []
    for scaled in (False, True):
        x = [t.clone().requires_grad_() for t in (q, k1, k2, v1, v2, b1, b2, s0)]
        keys, betas = x[1:3], x[5:7]
        written = keys if scaled else [b[..., None] * k for b, k in zip(betas, keys)]
        reads, final = core([x[0]], keys, written, x[3:5], None, x[7], 16, precision="ieee",
                            **({"write_scale": betas} if scaled else {}))
        ((reads[0] * weight).sum() + final.sum()).backward()
        runs.append([reads[0].detach(), final.detach()] + [t.grad for t in x])
    for got, want in zip(*runs):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_chunk_write_factor_is_handed_to_the_core(monkeypatch):
    """mamba2 and mlstm at bf16: chunk_parallel_core receives the key's scalar factor as
    `write_scale` (mamba2's dt, mlstm's exp(i); module.md, "A write scale") and the key
    unscaled: mamba2's B in bf16 as the call gave it (no `dt * B` on the torch side), mlstm's
    `kt = K^-1/2 k` (a let in fp32: the normaliser's scan reads it too); dt (read by the decay
    `dt * A` too) and exp(i) in fp32; every gradient comes back in bf16."""
    for name, key in (("mamba2", "B"), ("mlstm", None)):
        program = seqc.load(name)
        kernel = program.kernel("triton")
        own = kernel.module.MODE_CORES["chunk_parallel"]
        core, seen = own["chunk_core"], []

        def recorded(queries, keys, values, log_decay, state, chunk_size, **options):
            seen.append((keys[0], options.get("write_scale")))
            return core(queries, keys, values, log_decay, state, chunk_size, **options)
        monkeypatch.setitem(own, "chunk_core", recorded)
        tensors, _ = random_call(program.spec, sizes_of(program), dtype=torch.bfloat16, seed=3)
        x = {n: t.requires_grad_() for n, t in tensors.items()}
        kernel(**x)[program.spec.outputs[0].name].float().sum().backward()
        ((written, scale),) = seen
        if key is not None:
            assert written.dtype == torch.bfloat16
            assert written.data_ptr() == x[key].data_ptr()
        assert len(scale) == 1 and scale[0].dtype == torch.float32
        assert {t.grad.dtype for t in x.values()} == {torch.bfloat16}


@pytest.mark.parametrize("K, keywise", [(16, False), (80, False), (16, True), (144, False)])
def test_the_parallel_core_scales_the_key(K, keywise):
    """chunk_parallel_core with `write_scale` s on the key k is the core on s k (fp64: outputs
    and every gradient, s's among them): s k formed by the forward kernels, dk = s dw and
    ds = sum_K k dw by the fused backward kernel (K = 16); where the wide (K = 80), key-wise or
    dv and dq/dk kernels run, the wrapper forms s k under autograd."""
    program = seqc.load("simple_gla")
    core = program.kernel("triton").module.MODE_CORES["chunk_parallel"]["chunk_core"]
    generator = torch.Generator().manual_seed(11)
    B, T, H = 1, 40, 2
    q, k, v = (torch.randn(B, T, H, K, generator=generator, dtype=torch.float64)
               for _ in range(3))
    g = -torch.rand(*((B, T, H, K) if keywise else (B, T, H)), generator=generator,
                    dtype=torch.float64)
    s = torch.rand(B, T, H, generator=generator, dtype=torch.float64) + 0.5
    s0 = torch.randn(B, H, K, K, generator=generator, dtype=torch.float64)
    weight = torch.randn(B, H, T, K, generator=generator, dtype=torch.float64)
    runs = []
    for scaled in (False, True):
        x = [t.clone().requires_grad_() for t in (q, k, v, g, s, s0)]
        key = x[1] if scaled else x[4][..., None] * x[1]
        reads, final = core([x[0]], [key], [x[2]], x[3], x[5], 16, query_scale=0.3,
                            **({"write_scale": [x[4]]} if scaled else {}))
        ((reads[0] * weight).sum() + final.sum()).backward()
        runs.append([reads[0].detach(), final.detach()] + [t.grad for t in x])
    for got, want in zip(*runs):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, dims", [(torch.float32, 16), (torch.bfloat16, 16),
                                         (torch.bfloat16, 80)])
def test_mamba2_gradients_with_the_write_scale_match_the_reference(dtype, dims):
    """mamba2 trained in chunk_parallel, chunks of 16 (`dt * B` formed by the core's kernels
    at dims 16, by its wrapper at 80; dt's gradient from the key's factor and from the decay
    `dt * A`) against the reference's autograd in fp64 on the same values: fp32 within 1e-4,
    bf16 within 3% of each gradient's largest."""
    program = seqc.load("mamba2")
    tensors, _ = random_call(program.spec, sizes_of(program, T=40, dims=dims), seed=5)
    tensors = {n: t.to(dtype) for n, t in tensors.items()}
    weight = torch.randn(1, 40, 2, dims, generator=torch.Generator().manual_seed(1))
    grads = []
    triton = program.kernel("triton", mode="chunk_parallel", chunk_size=16)
    for kernel, cast in ((triton, dtype), (program.kernel("reference"), torch.float64)):
        x = {n: t.detach().to(cast).requires_grad_() for n, t in tensors.items()}
        (kernel(**x)["y"].double() * weight).sum().backward()
        grads.append({n: t.grad for n, t in x.items()})
    tolerance = 1e-4 if dtype == torch.float32 else 0.03
    for n, want in grads[1].items():
        got = grads[0][n]
        assert got.dtype == dtype
        assert (got.double() - want).abs().max() <= tolerance * want.abs().max(), n
