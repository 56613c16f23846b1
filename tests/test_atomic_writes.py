"""Nothing lost (issue 7): a write through ``lightning_film/io.py`` killed halfway leaves the old
file (or folder) byte for byte, and no partial file under the final name.

A real process (``tests/helpers/atomic_writer.py``) writes a large file over an old version and
SIGKILLs itself after the first chunk: no ``finally`` runs, so whatever it leaves is what a crash
leaves. The temporary file it was writing stays behind: named ``.<name>.<random>.tmp`` by io.py
(hidden, never the target's name), it cannot be mistaken for the file, and a later write neither
needs nor removes it. A last test reads the package's source for writes that bypass io.py.
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_film import io as film_io
from lightning_film.io import atomic_path, write_atomic

REPO = Path(__file__).resolve().parents[1]
WRITER = REPO / "tests" / "helpers" / "atomic_writer.py"
SIZE = 8 << 20  # 8 MiB in 1 MiB chunks: the writer dies after the first


def _old_bytes(size: int = 3 << 20) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()


def _digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and contents."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            h.update(p.relative_to(path).as_posix().encode() + (p.read_bytes() if p.is_file() else b"/"))
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_halfway(mode: str, target: Path) -> Path:
    """Run the writer to its SIGKILL; return the temporary path it was writing to."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, str(WRITER), mode, str(target), str(SIZE)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return Path(proc.stdout.strip())


def _assert_named_as_io_names_temporaries(leftover: Path, target: Path) -> None:
    assert leftover.parent == target.parent and leftover != target
    assert leftover.name.startswith(f".{target.name}.") and leftover.name.endswith(".tmp"), leftover.name


@pytest.mark.parametrize(
    ("mode", "written"), [("atomic_path", 1 << 20), ("write_atomic", 1 << 20), ("before_rename", SIZE)]
)
def test_a_file_write_killed_halfway_leaves_the_old_file(tmp_path: Path, mode: str, written: int) -> None:
    target = tmp_path / "results.bin"
    old = _old_bytes()
    target.write_bytes(old)
    tmp = _kill_halfway(mode, target)
    assert target.read_bytes() == old  # the old version, byte for byte; never a partial new one
    # the only other entry is the temporary file the writer had open: named so it is never the file
    assert sorted(tmp_path.iterdir()) == sorted([target, tmp])
    _assert_named_as_io_names_temporaries(tmp, target)
    assert tmp.stat().st_size == written  # partial (or complete but never renamed): only ever the temporary
    # the next write goes through regardless; the dead writer's leftover is left alone (safe to delete)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and tmp.exists()
    assert len(list(tmp_path.iterdir())) == 2


def test_a_folder_write_killed_halfway_leaves_the_old_folder(tmp_path: Path) -> None:
    """``atomic_path(..., directory=True)``, as an .mlpackage export uses it."""
    target = tmp_path / "model.mlpackage"
    (target / "Data").mkdir(parents=True)
    (target / "Manifest.json").write_text('{"old": true}')
    (target / "Data" / "weights.bin").write_bytes(_old_bytes(1 << 20))
    before = _digest(target)
    tmp = _kill_halfway("directory", target)
    assert _digest(target) == before
    assert sorted(tmp_path.iterdir()) == sorted([target, tmp])
    _assert_named_as_io_names_temporaries(tmp, target)
    assert tmp.is_dir() and sorted(p.name for p in tmp.iterdir()) == ["model.bin", "weights.bin"]


@pytest.mark.skipif(film_io._renameat2() is None, reason="no renameat2 (Linux, glibc >= 2.28) here")
def test_a_folder_replaces_the_old_one_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux the old and new folders are swapped by one rename (RENAME_EXCHANGE): there is no
    moment when the final name is missing. Proven here with the two-rename fallback made to fail."""
    target = tmp_path / "model.mlpackage"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise AssertionError(f"two-step rename {src} -> {dst}")

    monkeypatch.setattr(film_io.os, "replace", refuse)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.mlpackage"]  # the old folder is gone, no leftover


# -- every write goes through io.py ------------------------------------------------------------------
#: calls that write files, by the called name's last part (shutil's by the whole name)
_WRITERS = {"write_text", "write_bytes", "save", "savez", "savez_compressed", "savefig", "tofile"}
_SHUTIL_WRITERS = {"copy", "copy2", "copyfile", "copytree", "move"}
#: writes that do not go through atomic_path, each with the reason that is right
ALLOWED = {
    ("lightning_film/reproduce/runner.py", "open"): "the fit/test log a subprocess streams into, appended to on "
    "purpose: a killed run keeps the lines that say how far it got",
    ("lightning_film/data/shards.py", "savez_compressed"): "_save_npz writes into the file object shards.atomic_write "
    "opened inside atomic_path",
}


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_write(call: ast.Call) -> bool:
    name = _name(call)
    if name == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
    func = call.func
    if name in _SHUTIL_WRITERS:
        return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "shutil"
    return name in _WRITERS


def _in_memory(call: ast.Call) -> bool:
    """``torch.save(x, buffer)``, ``fig.savefig(buf)``: into an io.BytesIO, not a file."""
    names = [a.id for a in call.args if isinstance(a, ast.Name)]
    return any(n in ("buf", "buffer") for n in names)


def _inside_atomic_path(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call) and _name(item.context_expr) == "atomic_path" for item in node.items
        ):
            return True
    return False


def test_no_write_in_the_package_bypasses_io() -> None:
    bypass = []
    for path in sorted((REPO / "lightning_film").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "lightning_film/io.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_write(n)):
            if _in_memory(call) or _inside_atomic_path(call, parents) or (rel, _name(call)) in ALLOWED:
                continue
            bypass.append(f"{rel}:{call.lineno}: {ast.unparse(call)[:100]}")
    assert not bypass, "write through lightning_film.io.atomic_path / write_atomic:\n" + "\n".join(bypass)


def test_checkpoints_are_saved_beside_their_name_and_renamed(tmp_path: Path, monkeypatch, tiny_cli_args) -> None:
    """lightning-film's trainers save through AtomicCheckpointIO: a save that dies midway leaves
    the previous checkpoint as it was and nothing under the final name."""
    from lightning_film.checkpoints import AtomicCheckpointIO
    from lightning_film.cli import run_lightning_cli

    cli = run_lightning_cli(["fit", *tiny_cli_args])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def dies_midway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a kill, as far as the writer can tell

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    assert last.read_bytes() == before
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
