# Emitted by seqc 0.1.0 from spec `maxplus` (backend: reference).
# Do not edit: regenerate with `seqc compile maxplus.seq -b reference`.
# The spec, as seqc reads it:
#     model maxplus
#     dims D
#     input a[D]
#     input x[D]
#     state m[D] = -inf
#     m = max(m + a, x)
#     output y = m
"""Reference step loop for `maxplus`: see backends/reference/step_loop.md in seqc."""
import torch
import torch.nn.functional as F

STATES = ("m", )
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
    seq_a = inputs["a"].to(compute).unbind(1)
    seq_x = inputs["x"].to(compute).unbind(1)
    if initial_state is None:
        st_m = torch.full((*lead, dim_D, ), float("-inf"), dtype=compute, device=device)
    else:
        st_m = initial_state["m"].to(compute)
    out_y = []
    for t in range(dims["T"]):
        in_a = seq_a[t]
        in_x = seq_x[t]
        st_m = torch.maximum((st_m + in_a), in_x)
        out_y.append(st_m)
    outputs = {
        "y": torch.stack(out_y, dim=1),
    }
    if not output_final_state:
        return outputs, None
    return outputs, {
        "m": st_m,
    }
