# Emitted by seqc 0.1.0 from spec `lstm` (backend: reference).
# Do not edit: regenerate with `seqc compile lstm.seq -b reference`.
# The spec, as seqc reads it:
#     model lstm
#     dims D
#     input xi[D]
#     input xf[D]
#     input xz[D]
#     input xo[D]
#     param Ri[D, D]
#     param Rf[D, D]
#     param Rz[D, D]
#     param Ro[D, D]
#     state h[D] = 0
#     state c[D] = 0
#     let i = sigmoid(xi + Ri @ h)
#     let f = sigmoid(xf + Rf @ h)
#     let z = tanh(xz + Rz @ h)
#     let o = sigmoid(xo + Ro @ h)
#     c = f * c + i * z
#     h = o * tanh(c)
#     output y = h
"""Reference step loop for `lstm`: see backends/reference/step_loop.md in seqc."""
import torch
import torch.nn.functional as F

STATES = ("h", "c", )
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
    seq_xi = inputs["xi"].to(compute).unbind(1)
    seq_xf = inputs["xf"].to(compute).unbind(1)
    seq_xz = inputs["xz"].to(compute).unbind(1)
    seq_xo = inputs["xo"].to(compute).unbind(1)
    par_Ri = params["Ri"].to(compute)
    par_Rf = params["Rf"].to(compute)
    par_Rz = params["Rz"].to(compute)
    par_Ro = params["Ro"].to(compute)
    if initial_state is None:
        st_h = torch.full((*lead, dim_D, ), 0.0, dtype=compute, device=device)
    else:
        st_h = initial_state["h"].to(compute)
    if initial_state is None:
        st_c = torch.full((*lead, dim_D, ), 0.0, dtype=compute, device=device)
    else:
        st_c = initial_state["c"].to(compute)
    out_y = []
    for t in range(dims["T"]):
        in_xi = seq_xi[t]
        in_xf = seq_xf[t]
        in_xz = seq_xz[t]
        in_xo = seq_xo[t]
        let_i = torch.sigmoid((in_xi + torch.einsum('...ab,...b->...a', par_Ri, st_h)))
        let_f = torch.sigmoid((in_xf + torch.einsum('...ab,...b->...a', par_Rf, st_h)))
        let_z = torch.tanh((in_xz + torch.einsum('...ab,...b->...a', par_Rz, st_h)))
        let_o = torch.sigmoid((in_xo + torch.einsum('...ab,...b->...a', par_Ro, st_h)))
        st_c = ((let_f * st_c) + (let_i * let_z))
        st_h = (let_o * torch.tanh(st_c))
        out_y.append(st_h)
    outputs = {
        "y": torch.stack(out_y, dim=1),
    }
    if not output_final_state:
        return outputs, None
    return outputs, {
        "h": st_h,
        "c": st_c,
    }
