"""RWKV-7 from the stdlib: a diagonal-plus-low-rank transition, proven parallel, run chunkwise.

S_t = diag(exp(g_t)) S_{t-1} - (a_t * kk_t)(kk_t^T S_{t-1}) + k_t v_t^T: the low rank reads the
state before the decay, with another key (kk) than the write (k). seqc proves it associative
(kind chunk_delta, Plan group chunk_dplr) and runs it chunkwise; checked here against the step
loop and against the paper's value-by-key form written out below.
"""
import torch
import torch.nn.functional as F

import seqc

B, T, H, K, V = 2, 300, 2, 16, 16
torch.manual_seed(0)
r, k = torch.randn(B, T, H, K) / K ** 0.5, torch.randn(B, T, H, K) / K ** 0.5
v = torch.randn(B, T, H, V)
kk = F.normalize(torch.randn(B, T, H, K), dim=-1)       # the removal key, L2-normalised
g = F.logsigmoid(torch.randn(B, T, H, K))               # key-wise log decay, < 0
a = torch.sigmoid(torch.randn(B, T, H, K))              # in-context learning rate, in (0, 1)

program = seqc.load("rwkv7")
print(program.analysis)
reference = program.kernel("reference")(r=r, k=k, v=v, kk=kk, g=g, a=a, output_final_state=True)
parallel = program.kernel("torch")(r=r, k=k, v=v, kk=kk, g=g, a=a, output_final_state=True)

# the paper's orientation, state [V, K]: S <- S (diag(w) - kk^T (a kk)) + v^T k,  o = S r
S = torch.zeros(B, H, V, K)
outputs = []
for t in range(T):
    w = g[:, t].exp()
    transition = torch.diag_embed(w) - kk[:, t, :, :, None] * (a[:, t] * kk[:, t])[:, :, None, :]
    S = S @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]
    outputs.append((S @ r[:, t, :, :, None])[..., 0])
paper = torch.stack(outputs, 1)


def relative(x, y):
    return float((x - y).abs().max() / y.abs().max())


print(f"torch vs reference: output {relative(parallel.o, reference.o):.2e}, "
      f"state {relative(parallel.final_state['S'], reference.final_state['S']):.2e}")
print(f"reference vs paper: output {relative(reference.o, paper):.2e}, "
      f"state {relative(reference.final_state['S'], S.transpose(-1, -2)):.2e}")
assert relative(parallel.o, reference.o) < 1e-4 and relative(reference.o, paper) < 1e-4
assert relative(parallel.final_state["S"], S.transpose(-1, -2)) < 1e-4
print("ok")
