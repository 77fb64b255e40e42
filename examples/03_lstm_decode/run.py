"""An LSTM (nonlinear, so sequential): a whole sequence vs decoding one token at a time, and
both vs torch.nn.LSTMCell with the same weights."""
import torch

import seqc

B, T, H, D = 2, 20, 2, 8
torch.manual_seed(0)
lstm = seqc.load("lstm")
print(lstm.analysis)
xs = {name: torch.randn(B, T, H, D) for name in ("xi", "xf", "xz", "xo")}
Rs = {name: torch.randn(H, D, D) / D ** 0.5 for name in ("Ri", "Rf", "Rz", "Ro")}
step = lstm.kernel("reference")

whole = step(**xs, **Rs, output_final_state=True)

state, decoded = None, []
for t in range(T):
    out = step(**{k: v[:, t:t + 1] for k, v in xs.items()}, **Rs, initial_state=state,
               output_final_state=True)
    decoded.append(out.y)
    state = out.final_state
decoded = torch.cat(decoded, dim=1)
print(f"decode vs whole sequence: max |diff| {float((decoded - whole.y).abs().max()):.2e}")
assert torch.allclose(decoded, whole.y, atol=1e-6)

# torch.nn.LSTMCell, one cell per head; gates ordered i, f, g(z), o; inputs are W x + b already,
# so the cell gets an identity input weight and zero biases.
ys = torch.empty(B, T, H, D)
for head in range(H):
    cell = torch.nn.LSTMCell(4 * D, D)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.eye(4 * D))
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
        cell.weight_hh.copy_(torch.cat([Rs[n][head] for n in ("Ri", "Rf", "Rz", "Ro")]))
    h = c = torch.zeros(B, D)
    for t in range(T):
        x = torch.cat([xs[n][:, t, head] for n in ("xi", "xf", "xz", "xo")], dim=-1)
        h, c = cell(x, (h, c))
        ys[:, t, head] = h.detach()
print(f"seqc vs torch.nn.LSTMCell: max |diff| {float((whole.y - ys).abs().max()):.2e}")
assert torch.allclose(whole.y, ys, atol=1e-5)
print("ok")
