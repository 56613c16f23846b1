"""A writer that SIGKILLs itself halfway through writing through ``lightning_film/io.py``.

    python tests/helpers/atomic_writer.py MODE TARGET SIZE

writes SIZE bytes of ``b"N"`` to TARGET (a folder of two such files with ``directory``) in 1 MiB
chunks and kills itself with SIGKILL (no cleanup, no ``finally``, no ``atexit``: what an
out-of-memory kill does) after the first chunk. Before dying it prints the temporary path it was
writing to, so the test can tell a leftover temporary file from the target. Modes:

- ``atomic_path``: ``with atomic_path(TARGET) as tmp`` and chunked writes to ``tmp``;
- ``write_atomic``: ``write_atomic(TARGET, data)``, killed inside its single write;
- ``before_rename``: ``write_atomic(TARGET, data)`` with every byte written, killed just before the rename;
- ``directory``: ``with atomic_path(TARGET, directory=True) as tmp``, one whole file and half of another.

``io.py`` is loaded from its file, not as ``lightning_film.io``: importing the package imports torch
(seconds per process) and ``io.py`` needs only the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

CHUNK = 1 << 20
IO_PY = Path(__file__).resolve().parents[2] / "lightning_film" / "io.py"


def _load_io():
    spec = importlib.util.spec_from_file_location("lightning_film_io", IO_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _die(tmp: Path) -> None:
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _write_then_die(path: Path, size: int, tmp: Path) -> None:
    """Write ``size`` bytes to ``path`` chunk by chunk; die once the first chunk is on disk."""
    with open(path, "wb") as f:
        for start in range(0, size, CHUNK):
            f.write(b"N" * min(CHUNK, size - start))
            f.flush()
            os.fsync(f.fileno())
            _die(tmp)


def main(mode: str, target: str, size: int) -> None:
    io = _load_io()
    if mode == "atomic_path":
        with io.atomic_path(target) as tmp:
            _write_then_die(tmp, size, tmp)
    elif mode == "write_atomic":
        # write_atomic writes its bytes in one call: make that call die after the first chunk
        Path.write_bytes = lambda self, data: _write_then_die(self, len(data), self)
        io.write_atomic(target, b"N" * size)
    elif mode == "before_rename":
        real_replace = os.replace
        io.os.replace = lambda src, dst: _die(Path(src)) if Path(dst) == Path(target) else real_replace(src, dst)
        io.write_atomic(target, b"N" * size)
    elif mode == "directory":
        with io.atomic_path(target, directory=True) as tmp:
            (tmp / "weights.bin").write_bytes(b"N" * size)
            _write_then_die(tmp / "model.bin", size, tmp)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    raise SystemExit("the writer finished: it was meant to be killed halfway")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
