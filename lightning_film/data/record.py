"""Recording episodes of a world into a folder of shards, and ``lightning-film record``.

    lightning-film record                                    # the default dataset, into the cache
    lightning-film record --world bounce_room --frame-size 64 --episodes 512 --out data/bounce64
    lightning-film record --gym CartPole-v1 --out data/cartpole   # extra gym

Episode ``e`` of a recording with ``seed`` is a pure function of ``(world settings, policy
settings, seed, e)``: its world and policy are seeded from ``SeedSequence([seed, e])``, so the
first episodes of a longer recording are the episodes of a shorter one.

A recording is written into a temporary folder beside its destination and renamed into place
when complete (an old recording it replaces is removed only then), so the destination is never
half written and two processes recording the same cache folder at once both end up reading one
complete copy. Without ``out``, the destination is the cache:
``$LIGHTNING_FILM_CACHE`` (default ``~/.cache/lightning_film``) ``/worlds/<key>``, where the key
is ``<world>-<hash of the recording settings>`` (:attr:`Manifest.key`); there an existing
recording is reused, not recorded again.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_film.data.environments import StickyRandomPolicy, World, build_world, list_worlds
from lightning_film.data.shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    read_manifest,
    shard_name,
    write_manifest,
    write_shard,
)
from lightning_film.errors import CommandParser, check_int
from lightning_film.io import yaml_problem

__all__ = [
    "CACHE_ENV",
    "Recording",
    "cache_root",
    "default_folder",
    "episode_seeds",
    "plan_recording",
    "record",
    "record_command",
    "record_episode",
]

CACHE_ENV = "LIGHTNING_FILM_CACHE"
DEFAULT_WORLD = "bounce_room"


@dataclass
class Recording:
    """A recording on disk: where, what, how long it took, its size, and whether it was recorded now."""

    folder: Path
    manifest: Manifest
    seconds: float
    bytes: int
    recorded: bool


#: the most memory one episode, and one shard being built, may take
MAX_EPISODE_BYTES = 512 * 2**20


def cache_root() -> Path:
    """``$LIGHTNING_FILM_CACHE``, or ``~/.cache/lightning_film``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/lightning_film").expanduser()


def default_folder(manifest: Manifest) -> Path:
    """The cache folder of a recording: ``<cache>/worlds/<key>``."""
    return cache_root() / "worlds" / re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.key)


def plan_recording(
    world: Any = DEFAULT_WORLD,
    *,
    frame_size: int = 32,
    episodes: int = 256,
    episode_length: int = 64,
    seed: int = 0,
    stickiness: float = 0.8,
) -> tuple[World, StickyRandomPolicy, Manifest]:
    """The world, policy and manifest (without shards yet) of a recording; checks every setting."""
    check_int("episodes", episodes, 1)
    check_int("episode_length", episode_length, 2)
    check_int("seed", seed, 0)
    built = build_world(world, frame_size=frame_size)
    episode_bytes = int(episode_length) * built.frame_size**2 * 3
    if episode_bytes > MAX_EPISODE_BYTES:
        built.close()
        raise ValueError(
            f"one episode of {episode_length} frames of {built.frame_size} x {built.frame_size} takes "
            f"{episode_bytes / 2**30:.1f} GiB in memory, more than the {MAX_EPISODE_BYTES // 2**20} MiB allowed; lower "
            f"episode_length or frame_size"
        )
    try:
        policy = StickyRandomPolicy(built.num_actions, stickiness)
    except ValueError:
        built.close()
        raise
    name = built.name or (world["name"] if isinstance(world, Mapping) else str(world))
    manifest = Manifest(
        world=name,
        world_settings=built.settings(),
        policy=policy.settings(),
        seed=int(seed),
        episodes=int(episodes),
        episode_length=int(episode_length),
        frame_size=built.frame_size,
        num_actions=built.num_actions,
        action_names=list(built.action_names),
        channels=built.channels,
    )
    return built, policy, manifest


def episode_seeds(seed: int, episode: int) -> tuple[int, int]:
    """(world seed, policy seed) of episode ``episode`` of a recording seeded ``seed``."""
    world_seed, policy_seed = np.random.SeedSequence([seed, episode]).generate_state(2)
    return int(world_seed), int(policy_seed)


def record_episode(
    world: World, policy: StickyRandomPolicy, episode_length: int, seed: int, episode: int
) -> tuple[np.ndarray, np.ndarray]:
    """One episode: frames uint8 (T, H, W, 3) and actions int64 (T,); ``frames[t + 1]`` follows
    ``actions[t]``, the last action is chosen but not taken."""
    S = world.frame_size
    frames = np.empty((episode_length, S, S, 3), dtype=np.uint8)
    actions = np.empty(episode_length, dtype=np.int64)
    world_seed, policy_seed = episode_seeds(seed, episode)
    frame = world.reset(world_seed)
    policy.reset(policy_seed)
    for t in range(episode_length):
        if not isinstance(frame, np.ndarray) or frame.shape != (S, S, 3) or frame.dtype != np.uint8:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"world {world.name!r} returned a frame {got}; expected uint8 {(S, S, 3)}")
        frames[t] = frame
        actions[t] = policy.act()
        if t + 1 < episode_length:
            frame = world.step(int(actions[t]))
    return frames, actions


def _record_into(folder: Path, world: World, policy: StickyRandomPolicy, manifest: Manifest, per_shard: int) -> None:
    """Record every episode of ``manifest`` as shards in ``folder``, then its manifest."""
    T, S = manifest.episode_length, manifest.frame_size
    manifest.shards = []
    per_shard = max(1, min(per_shard, MAX_EPISODE_BYTES // (T * S * S * 3)))  # a shard is built in memory
    for first in range(0, manifest.episodes, per_shard):
        n = min(per_shard, manifest.episodes - first)
        frames = np.empty((n, T, S, S, 3), dtype=np.uint8)
        actions = np.empty((n, T), dtype=np.int64)
        for i in range(n):
            frames[i], actions[i] = record_episode(world, policy, T, manifest.seed, first + i)
        name = shard_name(len(manifest.shards))
        manifest.shards.append(ShardInfo(name, n, write_shard(folder / name, frames, actions)))
    write_manifest(folder, manifest)


def _folder_bytes(folder: Path, manifest: Manifest) -> int:
    return sum(s.bytes for s in manifest.shards) + (folder / MANIFEST).stat().st_size


def _sibling(folder: Path, what: str) -> Path:
    return folder.with_name(f".{folder.name}.{what}-{os.getpid()}-{secrets.token_hex(4)}")


def _install(tmp: Path, folder: Path, manifest: Manifest, reuse: bool) -> bool:
    """Rename the finished ``tmp`` to ``folder``. False if a same-key recording got there first (reuse)."""
    try:
        os.rename(tmp, folder)  # also replaces an empty folder
        return True
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise
    if reuse and read_manifest(folder).key == manifest.key:  # another process recorded it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    old = _sibling(folder, "old")
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return True


def record(
    world: Any = DEFAULT_WORLD,
    *,
    out: str | os.PathLike[str] | None = None,
    frame_size: int = 32,
    episodes: int = 256,
    episode_length: int = 64,
    seed: int = 0,
    stickiness: float = 0.8,
    episodes_per_shard: int = 64,
    overwrite: bool = False,
) -> Recording:
    """Record ``episodes`` episodes of ``world`` into ``out`` (default: the cache folder of these settings).

    Without ``out`` an existing recording of the same settings is reused. With ``out``, an
    existing recording there is an error unless ``overwrite``; a non-empty folder that is not
    a recording is never written into.
    """
    check_int("episodes_per_shard", episodes_per_shard, 1)
    built, policy, manifest = plan_recording(
        world, frame_size=frame_size, episodes=episodes, episode_length=episode_length, seed=seed, stickiness=stickiness
    )
    try:
        reuse = out is None
        folder = default_folder(manifest) if out is None else Path(out).expanduser().absolute()
        if (folder / MANIFEST).is_file():
            old = read_manifest(folder)
            if reuse and old.key == manifest.key:
                return Recording(folder, old, 0.0, _folder_bytes(folder, old), recorded=False)
            if not overwrite:
                raise ValueError(
                    f"{folder} already holds a recording ({old.key}); pass --overwrite (overwrite=True) to replace "
                    f"it, or choose another output folder"
                )
        elif folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"output folder {folder} exists, is not empty and holds no recording ({MANIFEST}); "
                f"refusing to write into it: choose a new or empty folder"
            )
        elif folder.exists() and not folder.is_dir():
            raise ValueError(f"output {folder} is a file, not a folder")
        blocker = next((p for p in folder.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ValueError(f"cannot write a recording to {folder}: {blocker} is a file, not a folder")
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = _sibling(folder, "tmp")
            tmp.mkdir()
        except OSError as err:
            raise ValueError(f"cannot write a recording to {folder}: {err.strerror or err}") from err
        start = time.perf_counter()
        try:
            _record_into(tmp, built, policy, manifest, episodes_per_shard)
            recorded = _install(tmp, folder, manifest, reuse)
        except OSError as err:
            raise ValueError(f"cannot write a recording to {folder}: {err.strerror or err}") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
        seconds = time.perf_counter() - start
        manifest = read_manifest(folder) if not recorded else manifest
        return Recording(folder, manifest, seconds, _folder_bytes(folder, manifest), recorded)
    finally:
        built.close()


# -- lightning-film record ---------------------------------------------------------------------------
def _parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option expects KEY=VALUE (e.g. spawn_prob=0.3), got {text!r}")
    problem = yaml_problem(value)
    if problem:
        raise ValueError(f"--option {key}: the value is refused: {problem}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ValueError(f"--option {key}: {value!r} is not a YAML value ({' '.join(str(err).split())})") from None


def record_command(argv: list[str]) -> None:
    """``lightning-film record``: record a world (or a Gymnasium env) into .npz shards."""
    parser = CommandParser(
        prog="lightning-film record",
        description="Record world-model episodes (frames and actions) into a folder of .npz shards "
        "with a manifest.json. Without --out, into the cache folder WorldDataModule reads.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--world", help=f"a registered world: {', '.join(list_worlds())} (default {DEFAULT_WORLD})")
    source.add_argument("--gym", metavar="ENV_ID", help="a Gymnasium environment, e.g. CartPole-v1 (extra gym)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a world option, e.g. spawn_prob=0.3 (value read as YAML); repeatable",
    )
    parser.add_argument("--episodes", type=int, default=256, help="episodes to record (default 256)")
    parser.add_argument("--episode-length", type=int, default=64, help="frames per episode (default 64)")
    parser.add_argument("--frame-size", type=int, default=32, help="frames are SIZE x SIZE RGB, >= 16 (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="recording seed (default 0)")
    parser.add_argument(
        "--stickiness", type=float, default=0.8, help="chance the random policy repeats its last action (default 0.8)"
    )
    parser.add_argument("--episodes-per-shard", type=int, default=64, help="episodes per .npz file (default 64)")
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: ${CACHE_ENV}/worlds/<key>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a recording already in --out")
    args = parser.parse_args(argv)
    spec: dict[str, Any] = {"name": "gym", "env_id": args.gym} if args.gym else {"name": args.world or DEFAULT_WORLD}
    spec.update(_parse_option(o) for o in args.option)
    result = record(
        spec,
        out=args.out,
        frame_size=args.frame_size,
        episodes=args.episodes,
        episode_length=args.episode_length,
        seed=args.seed,
        stickiness=args.stickiness,
        episodes_per_shard=args.episodes_per_shard,
        overwrite=args.overwrite,
    )
    m = result.manifest
    frames = m.episodes * m.episode_length
    what = f"{m.episodes} episodes x {m.episode_length} frames ({frames:,} frames of {m.frame_size}x{m.frame_size})"
    if result.recorded:
        print(
            f"recorded {what} of {m.world} in {result.seconds:.1f} s ({frames / max(result.seconds, 1e-9):,.0f} frames/s)"
        )
    else:
        print(f"already recorded (nothing to do): {what} of {m.world}")
    size = f"{result.bytes / 1e6:.1f} MB" if result.bytes >= 1e6 else f"{result.bytes / 1e3:.1f} kB"
    print(f"  {result.folder}: {len(m.shards)} shard(s), {size}, key {m.key}")
