"""Episode shards and manifests: round trip, atomic writes, and clear errors on every kind of bad file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_film.data import shards
from lightning_film.data.record import record
from lightning_film.data.shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    atomic_write,
    load_episodes,
    read_manifest,
    write_manifest,
    write_shard,
)

E, T, S = 3, 6, 16


def tiny_recording(folder: Path, **kwargs) -> Path:
    settings = {"frame_size": S, "episodes": E, "episode_length": T, "episodes_per_shard": 2, **kwargs}
    return record("bounce_room", out=folder, **settings).folder


def rewrite_shard(folder: Path, index: int, **arrays: np.ndarray) -> Path:
    """Replace shard ``index`` by ``arrays`` (uncompressed) and fix its size in the manifest."""
    data = json.loads((folder / MANIFEST).read_text())
    path = folder / data["shards"][index]["file"]
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    data["shards"][index]["bytes"] = path.stat().st_size
    (folder / MANIFEST).write_text(json.dumps(data))
    return path


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, T, S, S, 3), dtype=np.uint8)
    actions = rng.integers(0, 5, (4, T)).astype(np.int64)
    manifest = Manifest(
        "bounce_room",
        {"frame_size": S},
        {"name": "sticky_random", "stickiness": 0.8},
        0,
        4,
        T,
        S,
        5,
        ["noop", "up", "down", "left", "right"],
    )
    for i, (a, b) in enumerate([(0, 3), (3, 4)]):
        name = shards.shard_name(i)
        manifest.shards.append(ShardInfo(name, b - a, write_shard(tmp_path / name, frames[a:b], actions[a:b])))
    write_manifest(tmp_path, manifest)
    loaded, f, a = load_episodes(tmp_path)
    assert np.array_equal(f, frames) and np.array_equal(a, actions)
    assert f.dtype == np.uint8 and a.dtype == np.int64
    assert loaded == manifest and loaded.key == manifest.key
    assert json.loads((tmp_path / MANIFEST).read_text())["key"] == manifest.key


def test_key_is_a_function_of_the_settings_only():
    def make(**kw):
        settings = {"world": "w", "world_settings": {}, "policy": {}, "seed": 0, "episodes": 1}
        settings |= {"episode_length": 2, "frame_size": 16, "num_actions": 1, "action_names": ["a"]}
        return Manifest(**(settings | kw))

    assert make().key == make(shards=[ShardInfo("x.npz", 1, 10)]).key
    assert make().key != make(seed=1).key and make().key.startswith("w-")


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "episodes-00000.npz"
    frames, actions = np.zeros((1, T, S, S, 3), np.uint8), np.zeros((1, T), np.int64)

    def fail_midway(f, arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(shards, "_save_npz", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, frames, actions)
    assert list(tmp_path.iterdir()) == []  # no file under the final name, no temporary left behind
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, frames, actions)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    assert atomic_write(path, lambda f: f.write(b"new")) == 3 and path.read_bytes() == b"new"


def test_write_shard_checks_its_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"frames must be uint8 \(E, T, H, W, 3\), got float32"):
        write_shard(tmp_path / "x.npz", np.zeros((1, T, S, S, 3), np.float32), np.zeros((1, T), np.int64))
    with pytest.raises(ValueError, match=r"actions must be int64 \(E, T\) = \(1, 6\), got int32"):
        write_shard(tmp_path / "x.npz", np.zeros((1, T, S, S, 3), np.uint8), np.zeros((1, T), np.int32))


# -- bad shards ------------------------------------------------------------------------------------------
GOOD_FRAMES = np.zeros((2, T, S, S, 3), np.uint8)
GOOD_ACTIONS = np.zeros((2, T), np.int64)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"frames": GOOD_FRAMES.astype(np.float32), "actions": GOOD_ACTIONS},
            r"'frames' is float32 \(2, 6, 16, 16, 3\)",
        ),
        ({"frames": GOOD_FRAMES[:, :5], "actions": GOOD_ACTIONS}, r"'frames' is uint8 \(2, 5, 16, 16, 3\)"),
        ({"frames": GOOD_FRAMES, "actions": GOOD_ACTIONS.astype(np.int32)}, r"'actions' is int32 \(2, 6\)"),
        ({"frames": GOOD_FRAMES, "actions": GOOD_ACTIONS[:1]}, r"'actions' is int64 \(1, 6\)"),
        ({"frames": GOOD_FRAMES}, r"has arrays \['frames'\], lacking 'frames' or 'actions'"),
        (
            {"frames": GOOD_FRAMES, "actions": GOOD_ACTIONS + 7},
            r"action 7 \(episode 0 of the shard, step 0\) is outside "
            r"the action space \[0, 5\) of world 'bounce_room'",
        ),
        ({"frames": GOOD_FRAMES, "actions": np.array([[{}] * T] * 2, dtype=object)}, r"is not a readable \.npz"),
    ],
)
def test_bad_shard_contents_name_the_file_and_what_was_expected(tmp_path, arrays, message):
    folder = tiny_recording(tmp_path / "rec")
    path = rewrite_shard(folder, 0, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_episodes(folder)
    assert f"shard {path}" in str(err.value)


def test_missing_truncated_and_corrupt_shards(tmp_path):
    folder = tiny_recording(tmp_path / "rec")
    path = folder / "episodes-00001.npz"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        ValueError,
        match=rf"shard {path}: has {len(good) // 2} bytes but the manifest says {len(good)} "
        r"\(truncated or replaced\); expected 'frames' uint8 \(1, 6, 16, 16, 3\)",
    ):
        load_episodes(folder)
    corrupt = bytearray(good)
    corrupt[len(good) // 2 : len(good) // 2 + 64] = bytes(64)  # same size, damaged compressed data
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match=rf"shard {path}: is not a readable \.npz archive"):
        load_episodes(folder)
    path.write_bytes(b"x" * len(good))  # not a zip at all
    with pytest.raises(ValueError, match=rf"shard {path}: is not a readable \.npz archive"):
        load_episodes(folder)
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    rewrite = json.loads((folder / MANIFEST).read_text())
    rewrite["shards"][1]["bytes"] = path.stat().st_size
    (folder / MANIFEST).write_text(json.dumps(rewrite))
    with pytest.raises(ValueError, match=rf"shard {path}: is a single \.npy array, not an \.npz archive"):
        load_episodes(folder)
    path.unlink()
    with pytest.raises(ValueError, match=rf"shard {path}: is missing \(the manifest lists it\)"):
        load_episodes(folder)


# -- bad manifests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("episode_length"), r"missing key 'episode_length'"),
        (lambda m: m.update(version=99), r"format version 99; this lightning_film reads version 1"),
        (lambda m: m.update(format="other"), r"'format' is 'other', expected 'lightning_film.episodes'"),
        (lambda m: m.update(frame_size="16"), r"'frame_size' must be an integer, got '16'"),
        (lambda m: m.update(episodes=5), r"its shards hold 3 episodes, but 'episodes' is 5"),
        (lambda m: m.update(channels=4), r"'channels' must be 3 \(RGB\), got 4"),
        (lambda m: m["shards"][0].update(file="../escape.npz"), r"a shard entry must be \{'file': NAME"),
    ],
)
def test_bad_manifest_names_the_file_and_the_problem(tmp_path, change, message):
    folder = tiny_recording(tmp_path / "rec")
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    (folder / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"manifest {folder / MANIFEST}: {message}"):
        read_manifest(folder)


def test_folder_without_manifest_or_with_broken_json(tmp_path):
    with pytest.raises(ValueError, match=r"episode folder '.*nowhere' does not exist"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"has no manifest.json: it is not a recording.*lightning-film record --out"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest .*manifest.json is not readable JSON"):
        read_manifest(tmp_path)
