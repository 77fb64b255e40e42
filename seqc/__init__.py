"""seqc: a compiler for sequence models. Write one time step in a `.seq` spec; get kernels."""
from .api import Program, compile, load
from .errors import Diagnostic, SpecError

__version__ = "0.1.0"
__all__ = ["Program", "compile", "load", "SpecError", "Diagnostic", "__version__"]
