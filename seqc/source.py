"""Reading a spec: a stdlib name or a path, with located errors for unreadable files."""
from __future__ import annotations

from pathlib import Path

from .errors import Diagnostic, SpecError
from .ir import Span
from .resources import stdlib_dir, stdlib_names

MAX_FILE_BYTES = 1_000_000


def read_spec(name_or_path: str | Path) -> tuple[str, str]:
    """Return (source text, file name for messages); a bare name is looked up in the stdlib."""
    text = str(name_or_path)
    path = Path(text)
    if not path.exists() and "/" not in text and not text.endswith(".seq"):
        candidate = stdlib_dir() / f"{text}.seq"
        if candidate.is_file():
            return _read(candidate, f"{text}.seq")
        raise _file_error(text, f"no file or stdlib spec named `{text}`",
                          "`seqc list` shows the stdlib: " + ", ".join(stdlib_names()))
    return _read(path, text)


def _read(path: Path, shown: str) -> tuple[str, str]:
    if not path.exists():
        raise _file_error(shown, "no such file")
    if path.is_dir():
        raise _file_error(shown, "is a directory, not a .seq file")
    if not path.is_file():
        raise _file_error(shown, "is not a regular file")
    try:
        with path.open("rb") as handle:     # bounded: a huge file is refused, not slurped
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise _file_error(shown, f"cannot read the file ({error.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise _file_error(shown, f"file is too large (more than {MAX_FILE_BYTES} bytes)")
    data = data.removeprefix(b"\xef\xbb\xbf")     # a byte-order mark some editors write
    try:
        return data.decode("utf-8"), shown
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        col = len(data[line_start:error.start].decode("utf-8")) + 1   # in characters, not bytes
        raise SpecError([Diagnostic("error", f"the file is not valid UTF-8 (byte "
                                    f"0x{data[error.start]:02x})", Span(shown, line, col, line,
                                                                          col + 1),
                                    help="save the spec as UTF-8")],
                        data.decode("utf-8", errors="replace")) from None


def _file_error(shown: str, message: str, help: str | None = None) -> SpecError:
    return SpecError([Diagnostic("error", message, Span(shown, 1, 1, 1, 1), help)], "")
