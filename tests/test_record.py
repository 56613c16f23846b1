"""``lightning-film record`` and :func:`record`: output, determinism, the cache, overwriting, errors, Gymnasium."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lightning_film.cli import main
from lightning_film.data import record as record_module
from lightning_film.data.environments import BounceRoom
from lightning_film.data.record import CACHE_ENV, episode_seeds, record
from lightning_film.data.shards import MANIFEST, load_episodes, read_manifest

TINY = ["--episodes", "3", "--episode-length", "6", "--frame-size", "16"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def fail(args: list[str], capsys) -> str:
    """Run the CLI expecting a one-line user error (exit 2); return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("lightning-film: error: ") and err.count("\n") == 1
    return err


def test_record_command_writes_and_reports(tmp_path, capsys):
    out = tmp_path / "rec"
    main(["record", *TINY, "--out", str(out), "--episodes-per-shard", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("recorded 3 episodes x 6 frames (18 frames of 16x16) of bounce_room in ")
    assert "frames/s" in lines[0] and f"{out}: 2 shard(s)," in lines[1] and "kB, key bounce_room-" in lines[1]
    manifest, frames, actions = load_episodes(out)
    assert frames.shape == (3, 6, 16, 16, 3) and actions.shape == (3, 6) and manifest.num_actions == 5
    assert [s.episodes for s in manifest.shards] == [2, 1]
    assert sorted(p.name for p in out.iterdir()) == ["episodes-00000.npz", "episodes-00001.npz", MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]  # no temporary folder left beside it


def test_episodes_are_a_pure_function_of_seed_and_number(tmp_path):
    run = lambda name, **kw: load_episodes(record(out=tmp_path / name, frame_size=16, episode_length=8, **kw).folder)  # noqa: E731
    _, frames, actions = run("a", episodes=3, seed=1)
    _, again, again_actions = run("b", episodes=2, seed=1, episodes_per_shard=1)
    assert np.array_equal(again, frames[:2]) and np.array_equal(again_actions, actions[:2])
    _, other, _ = run("c", episodes=3, seed=2)
    assert not np.array_equal(other, frames)
    assert not np.array_equal(frames[0], frames[1])  # episodes differ from each other


def test_frames_follow_the_recorded_actions(tmp_path):
    """actions[t] is taken after frames[t] and gives frames[t + 1]; the last action leads nowhere."""
    _, frames, actions = load_episodes(record(out=tmp_path / "r", frame_size=16, episodes=2, episode_length=10).folder)
    world = BounceRoom(16)
    for e in range(2):
        assert np.array_equal(world.reset(episode_seeds(0, e)[0]), frames[e, 0])
        for t in range(9):
            assert np.array_equal(world.step(int(actions[e, t])), frames[e, t + 1])
    assert set(np.unique(actions)) <= set(range(5))


def test_world_options_and_the_gym_flag_are_parsed(tmp_path, capsys):
    main(["record", *TINY, "--option", "spawn_prob=0", "--option", "num_balls=1", "--out", str(tmp_path / "r")])
    assert read_manifest(tmp_path / "r").world_settings == {
        "frame_size": 16,
        "num_balls": 1,
        "spawn_prob": 0,
        "item_lifetime": 24,
        "max_items": 4,
    }
    assert "--option expects KEY=VALUE" in fail(["record", *TINY, "--option", "spawn_prob"], capsys)
    assert "got unknown option(s) ['speed']" in fail(["record", *TINY, "--option", "speed=2"], capsys)


def test_default_output_is_the_cache_and_is_reused(tmp_path, capsys, monkeypatch):
    main(["record", *TINY])
    first = capsys.readouterr().out
    folders = list((tmp_path / "cache" / "worlds").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("bounce_room-") and str(folders[0]) in first
    monkeypatch.setattr(record_module, "_record_into", lambda *a: pytest.fail("recorded again"))
    main(["record", *TINY])
    assert capsys.readouterr().out.startswith("already recorded (nothing to do): 3 episodes x 6 frames")


def test_a_concurrent_recorder_of_the_same_cache_folder_wins_cleanly(tmp_path, monkeypatch):
    original = record_module._record_into
    calls = []

    def racing(folder, world, policy, manifest, per_shard):
        original(folder, world, policy, manifest, per_shard)
        if not calls:  # another process finishes the same recording while this one is still busy
            calls.append(None)
            calls[0] = record(frame_size=16, episodes=2, episode_length=6)

    monkeypatch.setattr(record_module, "_record_into", racing)
    result = record(frame_size=16, episodes=2, episode_length=6)
    assert calls[0].recorded and not result.recorded and result.folder == calls[0].folder
    assert [p.name for p in result.folder.parent.iterdir()] == [result.folder.name]  # temporaries removed
    assert load_episodes(result.folder)[1].shape == (2, 6, 16, 16, 3)


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = str(tmp_path / "rec")
    main(["record", *TINY, "--out", out])
    err = fail(["record", *TINY, "--seed", "1", "--out", out], capsys)
    assert "already holds a recording (bounce_room-" in err and "--overwrite" in err
    before = load_episodes(out)[1]
    main(["record", *TINY, "--seed", "1", "--out", out, "--overwrite"])
    assert read_manifest(out).seed == 1 and not np.array_equal(load_episodes(out)[1], before)
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]  # the old copy is gone too


def test_refuses_folders_that_are_not_recordings_and_unwritable_places(tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    err = fail(["record", *TINY, "--out", str(other), "--overwrite"], capsys)
    assert "exists, is not empty and holds no recording" in err and (other / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    main(["record", *TINY, "--out", str(tmp_path / "empty")])  # an empty folder is fine
    assert (tmp_path / "empty" / MANIFEST).is_file()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert f"cannot write a recording to {blocker / 'rec'}: {blocker} is a file, not a folder" in fail(
        ["record", *TINY, "--out", str(blocker / "rec")], capsys
    )
    assert "output " in fail(["record", *TINY, "--out", str(blocker)], capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--world", "bounce_rom"],
            r"unknown world 'bounce_rom'; did you mean 'bounce_room'\? Registered worlds: bounce_room, gym",
        ),
        (["--frame-size", "8"], r"frame_size must be an integer >= 16 .*got 8"),
        (["--episodes", "0"], r"episodes must be an integer >= 1, got 0"),
        (["--episode-length", "1"], r"episode_length must be an integer >= 2, got 1"),
        (["--seed", "-1"], r"seed must be an integer >= 0, got -1"),
        (["--stickiness", "1"], r"stickiness must be in \[0, 1\)"),
        (["--episodes-per-shard", "0"], r"episodes_per_shard must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    import re

    err = fail(["record", "--out", str(tmp_path / "r"), *args], capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()


# -- Gymnasium ---------------------------------------------------------------------------------------------
def test_missing_gymnasium_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    err = fail(["record", "--gym", "CartPole-v1", *TINY], capsys)
    assert "needs the gymnasium package" in err and "pip install 'lightning_film[gym]'" in err


def test_gym_cartpole_records_headless(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    out = tmp_path / "cart"
    main(
        [
            "record",
            "--gym",
            "CartPole-v1",
            "--episodes",
            "2",
            "--episode-length",
            "40",
            "--frame-size",
            "16",
            "--out",
            str(out),
        ]
    )
    assert "of gym in" in capsys.readouterr().out
    manifest, frames, actions = load_episodes(out)
    assert manifest.world == "gym" and manifest.world_settings["env_id"] == "CartPole-v1"
    assert manifest.num_actions == 2 and frames.shape == (2, 40, 16, 16, 3)
    assert frames.std() > 0 and not np.array_equal(frames[0, 0], frames[0, -1])  # the pole moves
    again = load_episodes(
        record(
            {"name": "gym", "env_id": "CartPole-v1"},
            out=tmp_path / "again",
            frame_size=16,
            episodes=2,
            episode_length=40,
        ).folder
    )
    assert np.array_equal(again[1], frames)  # seeded, resets in place included (random CartPole falls in ~20 steps)


def test_gym_rejects_unknown_and_non_discrete_envs(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    pytest.importorskip("pygame")
    err = fail(["record", "--gym", "CartPol-v1", *TINY, "--out", str(tmp_path / "a")], capsys)
    assert "unknown Gymnasium environment 'CartPol-v1'; did you mean 'CartPole-v1'" in err
    err = fail(["record", "--gym", "Pendulum-v1", *TINY, "--out", str(tmp_path / "b")], capsys)
    assert "has action space Box(" in err and "only Discrete action spaces can be recorded" in err
