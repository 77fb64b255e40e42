# Emitted by seqc 0.1.0 from spec `gla` (backend: reference).
# Do not edit: regenerate with `seqc compile gla.seq -b reference`.
# The spec, as seqc reads it:
#     model gla
#     dims K, V
#     input q[K]
#     input k[K]
#     input v[V]
#     input g[K] in (-inf, 0)
#     state S[K, V] = 0
#     const scale = K ** -0.5
#     S = exp(g) * S + k * v
#     output o = scale * q @ S
"""Reference step loop for `gla`: see backends/reference/step_loop.md in seqc."""
import torch
import torch.nn.functional as F

STATES = ("S", )
OUTPUTS = ("o", )

def _permute(x, dims):
    """Reorder the trailing len(dims) dims of x (negative indices) and keep the leading ones."""
    lead = x.dim() - len(dims)
    return x.permute(*range(lead), *(lead + len(dims) + d for d in dims))


def run(inputs, params, dims, initial_state=None, output_final_state=False):
    first = next(iter(inputs.values()))
    compute = torch.float64 if first.dtype == torch.float64 else torch.float32
    device = first.device
    lead = (dims["B"], dims["H"])
    dim_K = dims["K"]
    dim_V = dims["V"]
    seq_q = inputs["q"].to(compute).unbind(1)
    seq_k = inputs["k"].to(compute).unbind(1)
    seq_v = inputs["v"].to(compute).unbind(1)
    seq_g = inputs["g"].to(compute).unbind(1)
    if initial_state is None:
        st_S = torch.full((*lead, dim_K, dim_V, ), 0.0, dtype=compute, device=device)
    else:
        st_S = initial_state["S"].to(compute)
    out_o = []
    for t in range(dims["T"]):
        in_q = seq_q[t]
        in_k = seq_k[t]
        in_v = seq_v[t]
        in_g = seq_g[t]
        st_S = ((torch.exp(in_g)[..., :, None] * st_S) + (in_k[..., :, None] * in_v[..., None, :]))
        out_o.append(torch.einsum('...a,...ab->...b', (dims["scale"] * in_q), st_S))
    outputs = {
        "o": torch.stack(out_o, dim=1),
    }
    if not output_final_state:
        return outputs, None
    return outputs, {
        "S": st_S,
    }
