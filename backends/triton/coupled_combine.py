"""The combine of a coupled scan (coupled_scan.md, coupled_combine.md): which entries of the
coupling matrices a scan carries (`closure`) and the code of the combine of two (A, b) tuples
over them (`combine_code`, rendered by coupled_combine.py.j2), for the blockwise kernel's coupled
scan; scan_parallel's two-level scan carries the same entries (`closure`).
"""
from __future__ import annotations


def closure(n: int, coupling: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The entries (i, j) a product of coupling matrices can make non-zero (with the identity's
    diagonal): the reflexive-transitive closure of `coupling` read as edges i <- j."""
    reach = {(i, i) for i in range(n)} | set(coupling)
    for k in range(n):
        reach |= {(i, j) for i in range(n) for j in range(n) if (i, k) in reach and (k, j) in reach}
    return sorted(reach)


def combine_code(n: int, entries: list[tuple[int, int]]) -> dict:
    """(A1, b1) o (A2, b2) = (A2 A1, A2 b1 + b2) over the carried entries, earlier on the left."""
    def a(side, i, j):
        return f"a{side}_{i}_{j}"

    params = ([a(1, i, j) for i, j in entries] + [f"b1_{i}" for i in range(n)]
              + [a(2, i, j) for i, j in entries] + [f"b2_{i}" for i in range(n)])
    results = [" + ".join(f"{a(2, i, j)} * {a(1, j, k)}" for j in range(n)
                          if (i, j) in entries and (j, k) in entries) for i, k in entries]
    results += [" + ".join([f"{a(2, i, j)} * b1_{j}" for j in range(n) if (i, j) in entries]
                           + [f"b2_{i}"]) for i in range(n)]
    return dict(params=params, results=results)
