"""Gated DeltaNet from the stdlib: reference loop vs the chunkwise torch backend vs fla-core."""
import torch
import torch.nn.functional as F

import seqc

B, T, H, K, V = 2, 200, 4, 32, 32
torch.manual_seed(0)
q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
v = torch.randn(B, T, H, V)
g = F.logsigmoid(torch.randn(B, T, H))            # log decay, < 0
beta = torch.rand(B, T, H)                         # in (0, 1)

program = seqc.load("gated_deltanet")
print(program.analysis)
reference = program.kernel("reference")(q=q, k=k, v=v, g=g, beta=beta, output_final_state=True)
parallel = program.kernel("torch", chunk_size=64)(q=q, k=k, v=v, g=g, beta=beta,
                                                  output_final_state=True)

from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule  # noqa: E402

fla_o, fla_state = naive_recurrent_gated_delta_rule(q, k, v, beta, g, output_final_state=True)


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


print(f"torch vs reference:      output {relative(parallel.o, reference.o):.2e}, "
      f"state {relative(parallel.final_state['S'], reference.final_state['S']):.2e}")
print(f"reference vs fla-core:   output {relative(reference.o, fla_o):.2e}, "
      f"state {relative(reference.final_state['S'], fla_state):.2e}")
assert relative(parallel.o, reference.o) < 1e-4 and relative(reference.o, fla_o) < 1e-5
print("ok")
