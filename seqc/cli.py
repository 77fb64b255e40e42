"""The `seqc` command line: check, ir, compile, run, bench, gpu-check, list."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from .errors import SpecError


class Failed(Exception):
    """A command stopped on a user's mistake, already reported on stderr."""


@contextmanager
def reporting(command: str):
    """Spec errors and bad arguments become a message on stderr and exit status 1."""
    try:
        yield
    except SpecError as error:
        print(error.render(), file=sys.stderr)
        raise Failed from None
    except ValueError as error:
        print(f"seqc {command}: error: {error}", file=sys.stderr)
        raise Failed from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return 2
    try:
        return args.command(args)
    except Failed:
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .emit import BACKENDS
    parser = argparse.ArgumentParser(prog="seqc", description="A compiler for sequence models.")
    parser.add_argument("--version", action="version", version=f"seqc {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    check = sub.add_parser("check", help="diagnostics and the analysis verdict per state")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--json", action="store_true", help="one JSON object per file")
    check.add_argument("-v", "--verbose", action="store_true",
                       help="also each state group's adjoint (the gradient's reverse recurrence)")
    check.set_defaults(command=cmd_check)

    ir_cmd = sub.add_parser("ir", help="the checked IR, pretty-printed as seqc syntax")
    ir_cmd.add_argument("file", metavar="FILE")
    ir_cmd.set_defaults(command=cmd_ir)

    compile_cmd = sub.add_parser("compile", help="emit the Python module of a backend")
    compile_cmd.add_argument("file", metavar="FILE")
    compile_cmd.add_argument("-b", "--backend", default="reference", metavar="BACKEND",
                             help=f"one of {', '.join(BACKENDS)} (default: reference)")
    compile_cmd.add_argument("-o", "--output", metavar="OUT", help="write here, not to stdout")
    compile_cmd.set_defaults(command=cmd_compile)

    run = sub.add_parser("run", help="random inputs through every backend, compared with the reference")
    run.add_argument("file", metavar="FILE")
    run.add_argument("--backends", default=None,
                     help="comma-separated (default: every backend that can run here: reference, "
                          "torch, and triton on CUDA or under its interpreter)")
    run.add_argument("--dims", default="", help="sizes of the spec's dims, e.g. K=16,V=16")
    run.add_argument("--batch", type=int, default=2)
    run.add_argument("--heads", type=int, default=2)
    run.add_argument("--steps", type=int, default=67)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    run.set_defaults(command=cmd_run)

    bench = sub.add_parser("bench", help="time every backend side by side")
    bench.add_argument("file", metavar="FILE")
    bench.add_argument("--backends", default="reference,torch",
                       help="comma-separated: reference, torch, triton, newton (torch with "
                            "solver=\"newton\")")
    bench.add_argument("--shape", default=None,
                       help="sizes, e.g. B=2,T=4096,H=4,K=64,V=64 (default: B=2, T=4096, H=4 "
                            "and 64 for each of the spec's dims)")
    bench.add_argument("--repeats", type=int, default=7)
    bench.add_argument("--io", action="store_true", help="count the bytes the kernels move")
    bench.add_argument("--plot", metavar="OUT.png")
    bench.add_argument("--model", choices=["h100", "h200"],
                       help="no timing: print the GPU model of the Triton modes at the shape "
                            "(default B=4,T=4096,H=16, dims 128, bf16; seqc/gpu_model.py)")
    bench.set_defaults(command=cmd_bench)

    _add_gpu_check(sub)

    listing = sub.add_parser("list", help="the stdlib, one line per spec")
    listing.set_defaults(command=cmd_list)
    return parser


def _add_gpu_check(sub) -> None:
    gpu = sub.add_parser("gpu-check", help="compile the Triton kernels for GPU targets (no GPU "
                         "needed): registers, spills, shared memory, tensor cores")
    gpu.add_argument("specs", nargs="+", metavar="SPEC", help="stdlib name or .seq file")
    gpu.add_argument("--arch", default="80,90", help="compute capabilities (80, 86, 89, 90)")
    gpu.add_argument("--dtype", default="bf16", help="call dtypes: bf16, fp16, fp32")
    gpu.add_argument("--dims", action="append", metavar="SIZES",
                     help="K=128,V=128 or a bare size for every dim (default 128); repeat the "
                          "option to check several sizes")
    gpu.add_argument("--shape", default="", help="the call shape of the launch grids "
                     "(default B=4,T=4096,H=16)")
    gpu.add_argument("--jobs", type=int, default=None, help="workers at once, one per spec (default: cores)")
    gpu.add_argument("--timeout", type=float, default=1200,
                     help="seconds for one spec's kernels on one target at one size")
    gpu.add_argument("--json", action="store_true", help="one JSON object")
    gpu.add_argument("--model", choices=["h100", "h200"],
                     help="also print the GPU model's time per kernel and mode on this GPU "
                          "(bf16), against the roofline bound")
    gpu.add_argument("--all-configs", action="store_true",
                     help="compile every launch configuration of the parallel forms' lists, "
                          "not only their fallbacks")
    gpu.set_defaults(command=cmd_gpu_check)


def _load(path: str):
    from .api import load
    return load(path)


def cmd_check(args) -> int:
    from .verdict import describe, to_json
    status = 0
    for path in args.files:
        try:
            program = _load(path)
        except SpecError as error:
            status = 1
            if args.json:
                print(json.dumps({"model": None, "file": path, "ok": False, "states": {},
                                  "diagnostics": [d.to_json() for d in error.diagnostics]}))
            else:
                print(error.render(), file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(to_json(program, path)))
        else:
            for warning in program.warnings:
                print(warning.render(program.source), file=sys.stderr)
            print(describe(program, args.verbose))
    return status


def cmd_ir(args) -> int:
    from .pretty import pretty
    with reporting("ir"):
        program = _load(args.file)
    print(pretty(program.spec), end="")
    return 0


def cmd_compile(args) -> int:
    with reporting("compile"):
        code = _load(args.file).emit(args.backend)
    if args.output:
        from .cache import write_atomic
        write_atomic(args.output, code)
    else:
        sys.stdout.write(code)
    return 0


def cmd_run(args) -> int:
    from .run import run_command
    return run_command(args)


def cmd_bench(args) -> int:
    from .bench import bench_command
    return bench_command(args)


def cmd_gpu_check(args) -> int:
    from .gpucheck import gpu_check_command
    return gpu_check_command(args)


def cmd_list(args) -> int:
    from .resources import stdlib_dir, stdlib_names
    for name in stdlib_names():
        summary = _summary((stdlib_dir() / f"{name}.seq").read_text(encoding="utf-8"))
        print(f"{name:<16} {summary}")
    return 0


def _summary(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("# ").strip():
            return stripped.lstrip("# ").strip()
    return ""


if __name__ == "__main__":
    # `python -m seqc.cli`: run the package's module, whose `Failed` the commands raise (this
    # `__main__` copy has its own class, so a user's mistake would end in a traceback)
    from seqc.cli import main as package_main
    sys.exit(package_main())
