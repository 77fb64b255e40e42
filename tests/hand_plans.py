"""Plans built by hand for the stdlib specs, to test the torch kernel families on their own.

Each role expression is written as seqc text and typed by the checker (it is compiled as an extra
`let` appended to the spec); a read placeholder is declared as an input and turned into
`Ref("read")`. These Plans say what the analysis is expected to conclude; the torch backend is
also tested through `program.analysis.plan` once the analysis exists.
"""
from __future__ import annotations

from dataclasses import fields, replace

import seqc
from seqc import ir
from seqc.plan import (ChunkGroup, DeltaGroup, DeltaStep, DplrGroup, Plan, Read, ScanGroup,
                       SemiringGroup, SequentialGroup, Write)


class Typer:
    def __init__(self, name: str):
        self.program = seqc.load(name)
        self.source = self.program.source
        self.read_dims: dict[str, tuple[str, ...]] = {}

    def exprs(self, *texts: str) -> list[ir.Expr]:
        decls = "".join(f"\ninput {n}[{', '.join(d)}]" if d else f"\ninput {n}"
                        for n, d in self.read_dims.items())
        lets = "".join(f"\nlet zzrole{i} = {t}" for i, t in enumerate(texts))
        spec = seqc.compile(self.source + decls + lets).spec
        values = {s.name: s.value for s in spec.body if isinstance(s, ir.Let)}
        return [_to_reads(values[f"zzrole{i}"], set(self.read_dims)) for i in range(len(texts))]

    def e(self, text: str) -> ir.Expr:
        return self.exprs(text)[0]


def _to_reads(node, reads: set[str]):
    if isinstance(node, ir.Name):
        return replace(node, ref=ir.Ref("read")) if node.id in reads else node
    changes = {}
    for f in fields(node):
        value = getattr(node, f.name)
        if isinstance(value, (ir.Num, ir.Name, ir.Unary, ir.Binary, ir.Call)):
            changes[f.name] = _to_reads(value, reads)
        elif isinstance(value, tuple) and value and isinstance(value[0], (ir.Num, ir.Name, ir.Unary, ir.Binary, ir.Call)):
            changes[f.name] = tuple(_to_reads(v, reads) for v in value)
    return replace(node, **changes)


def _plan(t: Typer, groups, reads=(), outputs=None, prelude=()):
    spec = t.program.spec
    lets = tuple(s for s in spec.body if isinstance(s, ir.Let) and s.name in prelude)
    return Plan(spec=spec, groups=tuple(groups), prelude=lets, reads=tuple(reads),
                outputs={n: t.e(text) for n, text in (outputs or {}).items()})


def _attention(name, decay, writes, query="(K ** -0.5) * q", out="o"):
    t = Typer(name)
    t.read_dims = {"rdS": ("V",)}
    writes = tuple(Write(t.e(k), t.e(v)) for k, v in writes)
    group = ChunkGroup("S", "K", "V", t.e(decay) if decay else None, writes)
    return _plan(t, [group], [Read("rdS", "S", t.e(query))], {out: "rdS"})


def _delta(name, decay, steps):
    t = Typer(name)
    t.read_dims = {"rdS": ("V",)}
    steps = tuple(DeltaStep(t.e(k), t.e(b), t.e(v), t.e(w[0]) if w else None)
                  for k, b, v, *w in steps)
    group = DeltaGroup("S", "K", "V", t.e(decay) if decay else None, steps)
    return _plan(t, [group], [Read("rdS", "S", t.e("(K ** -0.5) * q"))], {"o": "rdS"})


def _dplr(name, decay, erase, key, writes, query, unseen):
    t = Typer(name)
    t.read_dims = {"rdS": ("V",)}
    writes = tuple(Write(t.e(k), t.e(v)) for k, v in writes)
    group = DplrGroup("S", "K", "V", t.e(decay), t.e(erase), t.e(key), writes,
                      t.e(unseen) if unseen else None)
    return _plan(t, [group], [Read("rdS", "S", t.e(query))], {"o": "rdS"})


def _scan(name, state, coefficient, offset, out, read_dims=("D",), prelude=(), output="rdh"):
    t = Typer(name)
    t.read_dims = {"rdh": read_dims}
    group = ScanGroup((state,), {state: t.e(coefficient)}, {state: t.e(offset)})
    return _plan(t, [group], [Read("rdh", state, None)], {out: output}, prelude)


def _semiring(name, state, kind, coefficient, offset):
    t = Typer(name)
    t.read_dims = {"rdh": ("D",)}
    group = SemiringGroup(state, kind, t.e(coefficient), t.e(offset))
    return _plan(t, [group], [Read("rdh", state, None)], {"y": "rdh"})


def _sequential(name):
    t = Typer(name)
    spec = t.program.spec
    return Plan(spec=spec, groups=(SequentialGroup(tuple(s.name for s in spec.states)),),
                prelude=(), reads=(), outputs={})


def _mlstm():
    t = Typer("mlstm")
    t.read_dims = {"rdC": ("V",), "rdn": ()}
    c = ChunkGroup("C", "K", "V", t.e("f"), (Write(t.e("exp(i) * kt"), t.e("v")),))
    n = ChunkGroup("n", "K", None, t.e("f"), (Write(t.e("exp(i) * kt"), t.e("1")),))
    reads = [Read("rdC", "C", t.e("q")), Read("rdn", "n", t.e("q"))]
    return _plan(t, [c, n], reads, {"h": "rdC / max(abs(rdn), 1)"}, prelude=("kt",))


def _mamba2():
    t = Typer("mamba2")
    t.read_dims = {"rdh": ("P",)}
    group = ChunkGroup("h", "N", "P", t.e("dt * A"), (Write(t.e("dt * B"), t.e("x")),))
    return _plan(t, [group], [Read("rdh", "h", t.e("C"))], {"y": "rdh"})


HAND_PLANS = {
    "simple_gla": lambda: _attention("simple_gla", "g", [("k", "v")]),
    "gla": lambda: _attention("gla", "g", [("k", "v")]),
    "retnet": lambda: _attention("retnet", "log(gamma)", [("k", "v")]),
    "linear_attn": lambda: _attention("linear_attn", None, [("k", "v")]),
    "hgrn2": lambda: _attention("hgrn2", "g", [("1 - exp(g)", "v")], query="q"),
    "mamba2": _mamba2,
    "mlstm": _mlstm,
    "deltanet": lambda: _delta("deltanet", None, [("k", "beta", "v")]),
    "gated_deltanet": lambda: _delta("gated_deltanet", "g", [("k", "beta", "v")]),
    "kda": lambda: _delta("kda", "g", [("k", "beta", "v")]),
    "deltaproduct": lambda: _delta("deltaproduct", None, [("k1", "beta1", "v1"),
                                                          ("k2", "beta2", "v2")]),
    "hgrn": lambda: _scan("hgrn", "h", "exp(g)", "x", "o"),
    "mingru": lambda: _scan("mingru", "h", "1 - z", "z * xh", "y", prelude=("z",)),
    "minlstm": lambda: _scan("minlstm", "h", "f / (f + i)", "i / (f + i) * xh", "y",
                             prelude=("f", "i")),
    "lru": lambda: _scan("lru", "h", "lam", "sqrt(1 - lam ** 2) * x", "y", prelude=("lam",)),
    "rglru": lambda: _scan("rglru", "h", "a", "sqrt(1 - a ** 2) * (sigmoid(xi) * x)", "y",
                           prelude=("a",)),
    "mamba": lambda: _scan("mamba", "h", "exp(dt * A)", "dt * x * B", "y", ("D", "N"),
                           output="rdh @ C"),
    "maxplus": lambda: _semiring("maxplus", "m", "maxplus", "a", "x"),
    "logsumexp": lambda: _semiring("logsumexp", "s", "logsumexp", "la", "lb"),
    "lstm": lambda: _sequential("lstm"),
    "gru": lambda: _sequential("gru"),
    "rwkv7": lambda: _dplr("rwkv7", "g", "a * kk", "kk", [("k", "v")], "r", unseen="g"),
    # comba: the delta rule with its erase key p apart from its write key k (what the analysis
    # concludes), and the same recurrence as diagonal plus low rank with a scalar decay the key
    # sees (what it concluded before; `name/variant`: the spec is the part before the slash)
    "comba": lambda: _delta("comba", "g", [("p", "beta", "v", "k")]),
    "comba/dplr": lambda: _dplr("comba", "g", "beta * k", "p", [("beta * k", "v")],
                                "(K ** -0.5) * q", unseen=None),
}


def hand_plan(name: str) -> Plan:
    return HAND_PLANS[name]()
