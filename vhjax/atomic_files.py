"""Files replaced whole: write a temporary file beside the target, then rename it over the target,
so a reader (another process of a multi-process run, a concurrent cache user, a resume after a
kill) never sees half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def replace_atomically(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Create `path`'s folder, call `write(file)` on a temporary file there, rename it to `path`
    (readable by all, as a shared cache must be); on any error the old file stays, no temporary is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as file:
            write(file)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """`path.write_text(text)`, replaced whole (see the module doc)."""
    if not isinstance(text, str):
        raise TypeError(f"text has type {type(text).__name__}; allowed: str")
    replace_atomically(path, lambda file: file.write(text))
