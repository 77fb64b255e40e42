"""seqc: a compiler for sequence models. Write one time step in a `.seq` spec; get kernels."""
from .api import Program, compile, load
from .errors import Diagnostic, SpecError

__version__ = "0.1.0"
__all__ = ["Program", "compile", "load", "SpecError", "Diagnostic", "__version__"]


def __getattr__(name):
    """`seqc.nn` (the Mixer layer) loads on first use, so `import seqc` stays light."""
    if name == "nn":
        import importlib
        return importlib.import_module(".nn", __name__)
    raise AttributeError(f"module 'seqc' has no attribute {name!r}")
