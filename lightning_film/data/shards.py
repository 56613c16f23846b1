"""Episode shards: recorded episodes as ``.npz`` files in a folder, described by ``manifest.json``.

Legend: E episodes (in a shard), T ``episode_length``, H = W ``frame_size``, C = 3 channels.

A recording folder holds::

    manifest.json            what was recorded (see :class:`Manifest`); written last
    episodes-00000.npz       frames  uint8 (E, T, H, W, C)   actions int64 (E, T)
    episodes-00001.npz       ...

Episodes are numbered in shard order (the shards' ``episodes`` in the manifest add up to its
``episodes``). ``actions[e, t]`` is taken after observing ``frames[e, t]``: ``frames[e, t + 1]``
follows from ``frames[e, t]`` and ``actions[e, t]``. The last action of an episode is recorded
(the policy chose it) but leads nowhere: there is no frame ``T``.

Shards are saved with ``np.savez_compressed`` (the frames are flat colours: about 10x smaller)
and read with ``allow_pickle=False``. Every file is written under a temporary name in its
folder and ``os.replace``-d once complete, the manifest after every shard, so a folder with a
manifest is complete and a file under its final name is never half written. Reading checks
everything (file sizes, dtypes, shapes, action range) and reports a problem as one
``ValueError`` naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from lightning_film.data.environments import MAX_FRAME_SIZE
from lightning_film.io import atomic_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "Manifest",
    "ShardInfo",
    "atomic_write",
    "load_episodes",
    "read_manifest",
    "read_shard",
    "settings_hash",
    "shard_name",
    "write_manifest",
    "write_shard",
]

FORMAT = "lightning_film.episodes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_KIND_NAMES = {str: "a string", dict: "a JSON object", int: "an integer", list: "a list"}
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def shard_name(index: int) -> str:
    return f"episodes-{index:05d}.npz"


def settings_hash(settings: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``settings`` as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its file name (in the manifest's folder), episode count and size in bytes."""

    file: str
    episodes: int
    bytes: int


@dataclass
class Manifest:
    """What a recording folder holds. :meth:`settings` (everything but the shard list) says
    what was recorded; :attr:`key` names it (``<world>-<hash of the settings>``)."""

    world: str  # registered world name
    world_settings: dict[str, Any]  # options that rebuild the world, frame_size included
    policy: dict[str, Any]  # {"name": ..., **options}
    seed: int
    episodes: int
    episode_length: int
    frame_size: int
    num_actions: int
    action_names: list[str]
    channels: int = 3
    shards: list[ShardInfo] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        data = asdict(self)
        del data["shards"]
        return {"format": FORMAT, "version": FORMAT_VERSION, **data}

    @property
    def key(self) -> str:
        """Stable id of the recorded data: the same settings give the same key."""
        return f"{self.world}-{settings_hash(self.settings())}"

    def to_json(self) -> str:
        return json.dumps({**self.settings(), "key": self.key, "shards": [asdict(s) for s in self.shards]}, indent=2)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Validate a parsed manifest; ``where`` (its path) is named in every error."""

        def bad(what: str) -> ValueError:
            return ValueError(f"manifest {where}: {what}; re-record the folder with `lightning-film record`")

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise bad(f"'format' is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != FORMAT_VERSION:
            raise bad(f"format version {data.get('version')!r}; this lightning_film reads version {FORMAT_VERSION}")
        kinds: dict[str, type] = {
            "world": str,
            "world_settings": dict,
            "policy": dict,
            "seed": int,
            "episodes": int,
            "episode_length": int,
            "frame_size": int,
            "num_actions": int,
            "action_names": list,
            "channels": int,
            "shards": list,
        }
        for name, kind in kinds.items():
            if name not in data:
                raise bad(f"missing key {name!r}")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise bad(f"{name!r} must be {_KIND_NAMES[kind]}, got {data[name]!r}")
        for name, minimum in (("episodes", 1), ("episode_length", 2), ("frame_size", 1), ("num_actions", 1)):
            if data[name] < minimum:
                raise bad(f"{name!r} must be >= {minimum}, got {data[name]}")
        if data["frame_size"] > MAX_FRAME_SIZE:
            raise bad(f"'frame_size' must be <= {MAX_FRAME_SIZE}, got {data['frame_size']}")
        if data["channels"] != 3:
            raise bad(f"'channels' must be 3 (RGB), got {data['channels']}")
        shards = []
        for item in data["shards"]:
            ok = isinstance(item, dict) and set(item) == {"file", "episodes", "bytes"}
            ok = ok and isinstance(item["file"], str) and isinstance(item["episodes"], int) and item["episodes"] >= 1
            ok = ok and isinstance(item["bytes"], int) and Path(item["file"]).name == item["file"] != ".."
            if not ok:
                raise bad(f"a shard entry must be {{'file': NAME, 'episodes': >= 1, 'bytes': int}}, got {item!r}")
            if any(s.file == item["file"] for s in shards):
                # the same episodes twice: some would be both training and held-out data
                raise bad(f"shard {item['file']!r} is listed twice; every shard file must be listed once")
            shards.append(ShardInfo(**item))
        if sum(s.episodes for s in shards) != data["episodes"]:
            raise bad(
                f"its shards hold {sum(s.episodes for s in shards)} episodes, but 'episodes' is {data['episodes']}"
            )
        fields = {k: data[k] for k in kinds if k != "shards"}
        return cls(**fields, shards=shards)


# -- writing --------------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> int:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it
    to ``path`` (:func:`lightning_film.io.atomic_path`): on any error nothing is left under
    ``path`` and an old ``path`` stays as it was. Returns the size written, in bytes."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
    return size


def _save_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    np.savez_compressed(f, **arrays)


def write_shard(path: str | os.PathLike[str], frames: np.ndarray, actions: np.ndarray) -> int:
    """Write episodes ``frames`` uint8 (E, T, H, W, 3) and ``actions`` int64 (E, T) atomically; returns bytes."""
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (E, T, H, W, 3), got {frames.dtype} {frames.shape}")
    if actions.dtype != np.int64 or actions.shape != frames.shape[:2]:
        raise ValueError(f"actions must be int64 (E, T) = {frames.shape[:2]}, got {actions.dtype} {actions.shape}")
    return atomic_write(path, lambda f: _save_npz(f, {"frames": frames, "actions": actions}))


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically (last: its presence means the folder is complete)."""
    text = manifest.to_json().encode()
    atomic_write(Path(folder) / MANIFEST, lambda f: f.write(text))


# -- reading --------------------------------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """The validated manifest of a recording folder; a clear ValueError if there is none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"episode folder {str(folder)!r} does not exist (or is not a folder)")
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"episode folder {str(folder)!r} has no {MANIFEST}: it is not a recording, or its recording did not "
            f"finish; record one with `lightning-film record --out {folder}`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"manifest {path} is not readable JSON ({err}); re-record the folder") from err
    return Manifest.from_dict(data, str(path))


def shard_problem(path: Path, shard: ShardInfo, T: int, S: int) -> str | None:
    """What is wrong with shard file ``path`` that can be seen without inflating it, or None."""
    if not path.is_file():
        return "is missing (the manifest lists it)"
    size = path.stat().st_size
    if size != shard.bytes:
        return f"has {size} bytes but the manifest says {shard.bytes} (truncated or replaced)"
    # np.load guesses the format from the first bytes and takes anything it does not know for a
    # pickle ("load it unsafely if you trust it"): tell the cases apart before it guesses
    with open(path, "rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    if head == np.lib.format.MAGIC_PREFIX:
        return "is a single .npy array, not an .npz archive"
    if not zipfile.is_zipfile(path):
        return "is not a readable .npz archive (not a zip file: damaged, cut short or another kind of file)"
    return check_shard_headers(path, shard.episodes, T, S)


def _expected(E: int, T: int, S: int) -> str:
    return f"'frames' uint8 {(E, T, S, S, 3)} and 'actions' int64 {(E, T)}"


def read_shard(path: str | os.PathLike[str], manifest: Manifest, shard: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 (E, T, H, W, 3) and actions int64 (E, T) of one shard, checked against ``manifest``."""
    path = Path(path)
    E, T, S = shard.episodes, manifest.episode_length, manifest.frame_size
    expected = _expected(E, T, S)

    def bad(what: str) -> ValueError:
        return ValueError(f"shard {path}: {what}; expected {expected}. Re-record the folder")

    problem = shard_problem(path, shard, T, S)
    if problem:
        raise bad(problem)
    frames = actions = names = None
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = sorted(npz.files)
            if "frames" in names and "actions" in names:
                frames, actions = npz["frames"], npz["actions"]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise bad(f"is not a readable .npz archive (ValueError: {err})") from err
        raise bad(
            "is not a readable .npz archive: it holds pickled Python objects (object arrays), which are never "
            "loaded (allow_pickle=False)"
        ) from err
    except _READ_ERRORS as err:
        raise bad(f"is not a readable .npz archive ({type(err).__name__}: {err})") from err
    if frames is None or actions is None:
        raise bad(f"has arrays {names}, lacking 'frames' or 'actions'")
    if frames.dtype != np.uint8 or frames.shape != (E, T, S, S, 3):
        raise bad(f"'frames' is {frames.dtype} {frames.shape}")
    if actions.dtype != np.int64 or actions.shape != (E, T):
        raise bad(f"'actions' is {actions.dtype} {actions.shape}")
    outside = (actions < 0) | (actions >= manifest.num_actions)
    if outside.any():
        e, t = (int(i[0]) for i in np.nonzero(outside))
        raise ValueError(
            f"shard {path}: action {int(actions[e, t])} (episode {e} of the shard, step {t}) is outside the action "
            f"space [0, {manifest.num_actions}) of world {manifest.world!r}"
        )
    return frames, actions


#: deflate never shrinks data more than about 1032 to 1: a larger claimed ratio is a lie (a zip bomb)
DEFLATE_RATIO = 1032


def check_shard_headers(path: Path, E: int, T: int, S: int) -> str | None:
    """What is wrong with the array headers of shard ``path`` (its zip entries and .npy headers), read
    without inflating any data, or None. Done before anything is allocated: an 800-byte file may
    declare a 1 TiB array, and np.load allocates what the header says before any shape check."""
    expected = {"frames.npy": (np.dtype(np.uint8), (E, T, S, S, 3)), "actions.npy": (np.dtype(np.int64), (E, T))}
    try:
        with zipfile.ZipFile(path) as archive:
            for name, (dtype, shape) in expected.items():
                try:
                    info = archive.getinfo(name)
                except KeyError:
                    return None  # np.load names what is missing
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    got_shape, _, got_dtype = read(f)
                if got_dtype.hasobject:
                    return (
                        "is not a readable .npz archive: it holds pickled Python objects (object arrays), which "
                        "are never loaded (allow_pickle=False)"
                    )
                if got_dtype != dtype or tuple(got_shape) != shape:
                    return f"{name[:-4]!r} is {got_dtype} {tuple(got_shape)}"
                if info.file_size > DEFLATE_RATIO * max(info.compress_size, 1) + 4096:
                    return f"{name!r} claims {info.file_size} bytes from {info.compress_size} compressed (a zip bomb)"
    except (*_READ_ERRORS, RecursionError, SyntaxError) as err:
        return f"is not a readable .npz archive ({type(err).__name__}: {err})"
    return None


def load_episodes(folder: str | os.PathLike[str]) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """Every episode of a recording folder: (manifest, frames uint8 (E, T, H, W, 3), actions int64 (E, T))."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    T, S = manifest.episode_length, manifest.frame_size
    # every shard's size and headers first: memory for the manifest's episode count is allocated
    # only once the files on disk are seen to hold them
    for shard in manifest.shards:
        path = folder / shard.file
        problem = shard_problem(path, shard, T, S)
        if problem:
            raise ValueError(
                f"shard {path}: {problem}; expected {_expected(shard.episodes, T, S)}. Re-record the folder"
            )
    frames = np.empty((manifest.episodes, T, S, S, 3), dtype=np.uint8)
    actions = np.empty((manifest.episodes, T), dtype=np.int64)
    start = 0
    for shard in manifest.shards:
        f, a = read_shard(folder / shard.file, manifest, shard)
        frames[start : start + shard.episodes], actions[start : start + shard.episodes] = f, a
        start += shard.episodes
    return manifest, frames, actions
