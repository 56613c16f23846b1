"""Files the project writes are written whole or not at all.

Everything (results, shards, reports, caches, exports) goes to a temporary name in the target's
folder and is renamed over the target when complete: a crash, a kill or a full disk leaves the
old file intact and no partial file under the final name.

The temporary names are ``.<name>.<random>.tmp`` beside the target: hidden, and never the name
anything reads. A process killed mid-write (SIGKILL, out of memory, power loss) has no chance to
remove its temporary file or folder, so one may be left behind; it is safe to delete.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "folder_problem", "write_atomic", "yaml_problem"]

_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one step
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc, or a glibc older than 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported
    (another system, or a filesystem without it), and the caller falls back to two renames."""
    renameat2 = _renameat2()
    return (
        renameat2 is not None and renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    )


def _fsync(path: Path) -> None:
    """Flush a finished temporary file to disk, so the rename never publishes a file whose data a
    power loss could still take back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else remove it.

    ``directory=True`` yields an empty temporary folder (a whole .mlpackage, say) that replaces
    ``path`` as a unit: on Linux the old and new folders are swapped in one step, elsewhere the old
    one is moved aside first (a kill between the two renames leaves it as ``.<name>.old.<pid>``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if path.is_dir() and _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
                return
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o644)
            _fsync(tmp)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be, or be made, a folder to write into (``"'a/b' is a file, not a
    folder"``), or None; checked before long work whose results would then have nowhere to go."""
    path = Path(path).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{str(existing)!r} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(existing)!r} is not writable"
    try:  # os.access trusts permission bits, which root passes even where the kernel refuses (sysfs)
        os.rmdir(tempfile.mkdtemp(prefix=".lightning-film-probe-", dir=existing))
    except OSError as err:
        return f"{str(existing)!r} does not take new folders ({err.strerror or err})"
    return None


#: far above any real config or option, far below what would exhaust memory or time
MAX_YAML_VALUES = 100_000


def yaml_problem(text: str) -> str | None:
    """What makes YAML ``text`` unsafe to hand on, or None: more than :data:`MAX_YAML_VALUES` values
    once aliases are expanded (a "billion laughs": 700 bytes that expand to 10^9 and hang whoever
    renders them), nesting Python cannot follow, or a mapping key given twice (YAML keeps only the
    last, so a whole ``trainer:`` block would vanish without a word). Syntax errors are the parser's
    to report: they return None here."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    except RecursionError:
        return "it is nested deeper than can be read"
    sizes: dict[int, int] = {}
    stack = [root] if root is not None else []
    while stack:  # post-order, iterative: the depth of a hostile file must not matter
        node = stack[-1]
        children = (
            [v for pair in node.value for v in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        pending = [c for c in children if id(c) not in sizes]
        if pending:
            if len(stack) > 10_000:
                return "it is nested deeper than 10000 levels"
            stack.extend(pending)
            continue
        stack.pop()
        sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_VALUES + 1)
        if sizes[id(node)] > MAX_YAML_VALUES:
            return f"it expands to more than {MAX_YAML_VALUES} values (YAML aliases repeating aliases)"
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        return (
                            f"key {key.value!r} is given twice (lines {seen[key.value]} and "
                            f"{key.start_mark.line + 1}); YAML would keep only the last"
                        )
                    seen[key.value] = key.start_mark.line + 1
    return None
