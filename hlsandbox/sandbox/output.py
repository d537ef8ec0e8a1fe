"""Where the guest's prints go: the `writer` of a sandbox, checked when the sandbox is made."""
from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any


def output_function(writer: Any) -> Callable[[str], Any]:
    """The function that writes one guest print for `writer`: None (sys.stdout at the time of
    the print), a text file, a binary file (it receives UTF-8 bytes) or a callable taking a
    string. Raises TypeError for anything else."""
    if writer is None:
        return lambda text: sys.stdout.write(text)
    write: Callable[[Any], Any] | None = getattr(writer, "write", None)
    if callable(write):
        if _is_binary(writer):
            return lambda text: write(text.encode("utf-8", "surrogateescape"))
        return write
    if callable(writer):
        fn: Callable[[str], Any] = writer
        return fn
    raise TypeError(f"writer must be a file-like object with write() or a callable taking a string, "
                    f"not {type(writer).__name__}")


def _is_binary(f: Any) -> bool:
    if isinstance(f, (io.RawIOBase, io.BufferedIOBase)):
        return True
    if isinstance(f, io.TextIOBase):
        return False
    mode = getattr(f, "mode", None)
    return isinstance(mode, str) and "b" in mode
