# Emitted by seqc 0.1.0 from spec `mamba` (backend: reference).
# Do not edit: regenerate with `seqc compile mamba.seq -b reference`.
# The spec, as seqc reads it:
#     model mamba
#     dims D, N
#     input x[D]
#     input B[N]
#     input C[N]
#     input dt[D] in (0, inf)
#     param A[D, N] in (-inf, 0)
#     state h[D, N] = 0
#     h = exp(dt * A) * h + dt * x * B
#     output y = h @ C
"""Reference step loop for `mamba`: see backends/reference/step_loop.md in seqc."""
import torch
import torch.nn.functional as F

STATES = ("h", )
OUTPUTS = ("y", )

def _permute(x, dims):
    """Reorder the trailing len(dims) dims of x (negative indices) and keep the leading ones."""
    lead = x.dim() - len(dims)
    return x.permute(*range(lead), *(lead + len(dims) + d for d in dims))


def run(inputs, params, dims, initial_state=None, output_final_state=False):
    first = next(iter(inputs.values()))
    compute = torch.float64 if first.dtype == torch.float64 else torch.float32
    device = first.device
    lead = (dims["B"], dims["H"])
    dim_D = dims["D"]
    dim_N = dims["N"]
    seq_x = inputs["x"].to(compute).unbind(1)
    seq_B = inputs["B"].to(compute).unbind(1)
    seq_C = inputs["C"].to(compute).unbind(1)
    seq_dt = inputs["dt"].to(compute).unbind(1)
    par_A = params["A"].to(compute)
    if initial_state is None:
        st_h = torch.full((*lead, dim_D, dim_N, ), 0.0, dtype=compute, device=device)
    else:
        st_h = initial_state["h"].to(compute)
    out_y = []
    for t in range(dims["T"]):
        in_x = seq_x[t]
        in_B = seq_B[t]
        in_C = seq_C[t]
        in_dt = seq_dt[t]
        st_h = ((torch.exp((in_dt[..., :, None] * par_A)) * st_h) + ((in_dt * in_x)[..., :, None] * in_B[..., None, :]))
        out_y.append(torch.einsum('...ab,...b->...a', st_h, in_C))
    outputs = {
        "y": torch.stack(out_y, dim=1),
    }
    if not output_final_state:
        return outputs, None
    return outputs, {
        "h": st_h,
    }
