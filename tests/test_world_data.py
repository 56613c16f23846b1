"""WorldDataModule: the batch contract, the split by episode, window order, the cache, data_dir, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_film.data import WorldDataModule
from lightning_film.data import record as record_module
from lightning_film.data.record import CACHE_ENV, record
from lightning_film.data.shards import MANIFEST, load_episodes
from lightning_film.data.world import EpisodeWindows, train_keys
from lightning_film.registry import RegistryError

E, T, S, K = 6, 12, 16, 3
SMALL = {
    "episodes": E,
    "episode_length": T,
    "frame_size": S,
    "context_frames": K,
    "val_episodes": 1,
    "test_episodes": 1,
    "batch_size": 4,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return record(out=tmp_path_factory.mktemp("rec") / "bounce", frame_size=S, episodes=E, episode_length=T).folder


def make(folder: Path | None = None, **kwargs) -> WorldDataModule:
    options = {**SMALL, **kwargs}
    if folder is not None:
        options = {k: v for k, v in options.items() if k not in ("episodes", "episode_length", "frame_size")}
    dm = WorldDataModule(data_dir=None if folder is None else str(folder), **options)
    dm.setup("fit")
    return dm


# -- the batch contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_batches_follow_the_contract(folder, split):
    dm = make(folder)
    _, frames, actions = load_episodes(folder)
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    batch = next(iter(loader))
    B = dm.batch_size
    assert batch["context"].dtype == torch.uint8 and batch["context"].shape == (B, K, 3, S, S)
    assert batch["target"].dtype == torch.uint8 and batch["target"].shape == (B, 3, S, S)
    for key in ("action", "episode", "step"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (B,)
    for row in range(B):
        e, t = int(batch["episode"][row]), int(batch["step"][row])
        assert K - 1 <= t <= T - 2 and e in dm.split_episodes[split]
        context = torch.from_numpy(frames[e, t - K + 1 : t + 1]).permute(0, 3, 1, 2)  # (K, 3, H, W)
        assert torch.equal(batch["context"][row], context)
        assert torch.equal(batch["target"][row], torch.from_numpy(frames[e, t + 1]).permute(2, 0, 1))
        assert int(batch["action"][row]) == actions[e, t]


def test_what_the_model_reads(folder):
    dm = make(folder)
    assert (dm.num_actions, dm.frame_size, dm.channels, dm.context_frames) == (5, S, 3, K)
    assert dm.dataset_key == load_episodes(folder)[0].key and dm.dataset_key.startswith("bounce_room-")
    episodes = dm.episodes("val")
    assert len(episodes) == 1
    frames, actions = episodes[0]
    assert (
        frames.dtype == np.uint8
        and frames.shape == (T, S, S, 3)
        and actions.dtype == np.int64
        and actions.shape == (T,)
    )
    assert np.array_equal(frames, load_episodes(folder)[1][dm.split_episodes["val"][0]])
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\], got 'dev'"):
        dm.episodes("dev")
    with pytest.raises(RuntimeError, match=r"setup\(\) must run first"):
        WorldDataModule(data_dir=str(folder), val_episodes=1, test_episodes=1).episodes("val")


# -- splits and windows ----------------------------------------------------------------------------------
def test_split_by_episode(folder):
    dm = make(folder, val_episodes=2, test_episodes=1)
    splits = dm.split_episodes
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(E))  # each episode in one split
    for split in ("val", "test"):
        seen = {int(e) for b in getattr(dm, f"{split}_dataloader")() for e in b["episode"]}
        assert seen == set(splits[split].tolist())
    assert all(
        np.array_equal(make(folder, val_episodes=2, test_episodes=1, seed=9).split_episodes[s], splits[s])
        for s in splits
    )  # the training seed does not move the split
    others = [make(folder, val_episodes=2, test_episodes=1, split_seed=s).split_episodes["val"] for s in range(1, 6)]
    assert any(not np.array_equal(o, splits["val"]) for o in others)


def test_eval_reads_every_window_once_in_order_or_an_even_subset(folder):
    dm = make(folder, val_episodes=2, test_episodes=1)
    got = [(int(e), int(t)) for b in dm.val_dataloader() for e, t in zip(b["episode"], b["step"])]
    assert got == [(int(e), t) for e in dm.split_episodes["val"] for t in range(K - 1, T - 1)]
    capped = make(folder, val_episodes=2, test_episodes=1, max_eval_windows=5)
    sub = [(int(e), int(t)) for b in capped.val_dataloader() for e, t in zip(b["episode"], b["step"])]
    assert len(sub) == 5 and sub == sorted(sub) and set(sub) <= set(got)
    assert {e for e, _ in sub} == set(dm.split_episodes["val"].tolist())  # both episodes still scored


def test_training_windows_are_a_pure_function_of_seed_epoch_index(folder):
    dm, again = make(folder, seed=3), make(folder, seed=3)
    picks = [dm.train_window(epoch, i) for epoch in (0, 1) for i in range(20)]
    assert picks == [again.train_window(epoch, i) for epoch in (0, 1) for i in range(20)]
    assert picks[:20] != picks[20:]
    assert picks[:20] != [make(folder, seed=4).train_window(0, i) for i in range(20)]
    loader = dm.train_dataloader()
    per_epoch = dm.train_windows_per_epoch
    assert len(loader.sampler) == per_epoch == 4 * (T - K)  # default: every training window once
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)  # Lightning calls it before each epoch
        seen = [(int(e), int(t)) for b in loader for e, t in zip(b["episode"], b["step"])]
        assert seen[: dm.batch_size] == [dm.train_window(epoch, i) for i in range(dm.batch_size)]
        windows = {(int(e), t) for e in dm.split_episodes["train"] for t in range(K - 1, T - 1)}
        assert sorted(seen) == sorted(windows)  # a shuffle of every training window


def test_shorter_epochs_read_every_window_before_repeating(folder):
    dm = make(folder, train_windows_per_epoch=7)
    total = dm.windows("train").total
    stream = [dm.train_window(epoch, i) for epoch in range(total // 7 + 1) for i in range(7)]
    assert len(set(stream[:total])) == total
    assert len(dm.train_dataloader().sampler) == 7


def test_ddp_ranks_read_distinct_windows_and_follow_the_epoch(folder):
    from torch.utils.data import DistributedSampler

    from lightning_film.data.sampling import WindowSampler

    dm = make(folder, seed=1)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, DistributedSampler)  # so Lightning uses it as is under DDP
    for epoch in (0, 1):
        one = WindowSampler(sampler.keys, sampler.length)
        one.set_epoch(epoch)
        whole = list(one)
        ranks = []
        for rank in (0, 1):
            part = WindowSampler(sampler.keys, sampler.length, num_replicas=2, rank=rank)
            part.set_epoch(epoch)
            ranks.append(list(part))
        assert ranks[0] == whole[0::2] and ranks[1] == whole[1::2]  # 2 x batch B sees what 1 x 2B sees
        assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == len(sampler) // 2
        expected = train_keys(1, epoch, np.arange(len(sampler)), len(sampler), len(sampler))
        assert whole == expected.tolist()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 5),
    length=st.integers(1, 40),
    total=st.integers(1, 30),
    context=st.integers(1, 4),
    extra=st.integers(1, 5),
)
def test_train_keys_and_window_indexing(seed, epoch, length, total, context, extra):
    index = np.arange(length)
    keys = train_keys(seed, epoch, index, length, total)
    assert np.array_equal(keys, train_keys(seed, epoch, index, length, total))
    assert keys.min() >= 0 and keys.max() < total
    g = epoch * length + index  # positions of one pass through the windows form a permutation of them
    for p in np.unique(g // total):
        whole = train_keys(seed, 0, np.arange(p * total, (p + 1) * total), 1, total)
        assert sorted(whole.tolist()) == list(range(total))
        assert np.array_equal(keys[g // total == p], whole[g[g // total == p] % total])
    # window numbers <-> (episode, step): a bijection onto the windows of the episodes, none crossing an edge
    length_t = context + extra
    ids = np.array([4, 7])
    windows = EpisodeWindows(
        np.zeros((9, length_t, 1, 1, 3), np.uint8), np.zeros((9, length_t), np.int64), ids, context
    )
    located = [windows.locate(k) for k in range(windows.total)]
    assert located == [(int(e), t) for e in ids for t in range(context - 1, length_t - 1)]
    with pytest.raises(IndexError):
        windows.locate(windows.total)


# -- recording into the cache ----------------------------------------------------------------------------
def test_default_world_is_recorded_on_first_use_then_reused(tmp_path, monkeypatch):
    dm = WorldDataModule(**SMALL)
    assert not dm.data_folder.exists() and dm.data_folder.parent == tmp_path / "cache" / "worlds"
    assert dm.data_folder.name == dm.dataset_key and dm.num_actions == 5 and dm.frame_size == S
    dm.prepare_data()
    assert (dm.data_folder / MANIFEST).is_file()
    mtime = (dm.data_folder / MANIFEST).stat().st_mtime_ns
    monkeypatch.setattr(record_module, "_record_into", lambda *a: pytest.fail("recorded again"))
    again = WorldDataModule(**SMALL)
    again.prepare_data()
    again.setup("fit")
    assert again.dataset_key == dm.dataset_key and (dm.data_folder / MANIFEST).stat().st_mtime_ns == mtime
    assert next(iter(again.train_dataloader()))["context"].shape == (4, K, 3, S, S)


def test_setup_records_when_prepare_data_did_not_run_and_keys_follow_settings():
    dm = make()  # setup() alone
    assert (dm.data_folder / MANIFEST).is_file()
    assert dm.dataset_key != WorldDataModule(**{**SMALL, "frame_size": 24}).dataset_key
    assert dm.dataset_key != WorldDataModule(**{**SMALL, "record_seed": 1}).dataset_key
    world = WorldDataModule(**{**SMALL, "world": {"name": "bounce_room", "spawn_prob": 0.5}})
    assert world.dataset_key != dm.dataset_key and world.manifest.world_settings["spawn_prob"] == 0.5
    # a folder recorded by hand with the same settings is the same data
    by_hand = record(out=dm.data_folder.parent.parent / "by_hand", frame_size=S, episodes=E, episode_length=T)
    assert by_hand.manifest.key == dm.dataset_key


# -- data_dir and bad input --------------------------------------------------------------------------------
def test_data_dir_settings_come_from_the_manifest(folder, tmp_path):
    dm = WorldDataModule(data_dir=str(folder), val_episodes=1, test_episodes=1, episodes=E, world="bounce_room")
    assert (dm.frame_size, dm.episode_length, dm.num_episodes) == (S, T, E)
    with pytest.raises(
        ValueError, match=r"recorded with frame_size=16, but frame_size=32 was given; leave frame_size unset"
    ):
        WorldDataModule(data_dir=str(folder), frame_size=32, val_episodes=1, test_episodes=1)
    with pytest.raises(ValueError, match=r"recorded with seed=0, but record_seed=2 was given"):
        WorldDataModule(data_dir=str(folder), record_seed=2, val_episodes=1, test_episodes=1)
    with pytest.raises(ValueError, match=r"holds world 'bounce_room' with .*but world='gym' was given"):
        WorldDataModule(data_dir=str(folder), world="gym", val_episodes=1, test_episodes=1)
    with pytest.raises(ValueError, match=r"has no manifest.json"):
        WorldDataModule(data_dir=str(tmp_path))


def test_broken_shards_surface_at_setup(folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "episodes-00000.npz").write_bytes(b"garbage")
    dm = WorldDataModule(data_dir=str(copy), val_episodes=1, test_episodes=1)
    with pytest.raises(ValueError, match=r"shard .*episodes-00000.npz: has 7 bytes but the manifest says"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"frame_size": 8}, ValueError, r"frame_size must be an integer >= 16 .*got 8"),
        ({"context_frames": 0}, ValueError, r"context_frames must be an integer >= 1, got 0"),
        ({"context_frames": 12}, ValueError, r"context_frames must be < episode_length=12 .*got 12"),
        (
            {"val_episodes": 3, "test_episodes": 3},
            ValueError,
            r"episodes=6 leave no training episode after val_episodes=3 and test_episodes=3",
        ),
        ({"episodes": 0}, ValueError, r"episodes must be an integer >= 1, got 0"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1, got 0"),
        ({"train_windows_per_epoch": 0}, ValueError, r"train_windows_per_epoch must be an integer >= 1, got 0"),
        ({"max_eval_windows": -1}, ValueError, r"max_eval_windows must be an integer >= 1, got -1"),
        ({"world": "bounce"}, RegistryError, r"unknown world 'bounce'.*Registered worlds: bounce_room, gym"),
    ],
)
def test_bad_input_gives_a_clear_message(kwargs, error, message):
    with pytest.raises(error, match=message):
        WorldDataModule(**{**SMALL, **kwargs})


def test_empty_held_out_split_has_no_loader(folder):
    dm = make(folder, test_episodes=0)
    with pytest.raises(ValueError, match=r"the test split is empty: set test_episodes > 0"):
        dm.test_dataloader()


def test_lightning_cli_reads_the_signature(folder):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(WorldDataModule, "data")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    cfg = parser.parse_args(
        [
            "--data.world",
            '{"name": "bounce_room", "spawn_prob": 0.5}',
            "--data.frame_size",
            "16",
            "--data.val_episodes",
            "1",
            "--data.test_episodes",
            "1",
            "--data.episodes",
            "6",
        ]
    )
    dm = instantiate(cfg)["data"]
    assert dm.frame_size == 16 and dm.manifest.world_settings["spawn_prob"] == 0.5
    cfg = parser.parse_args(["--data.data_dir", str(folder), "--data.val_episodes", "1", "--data.test_episodes", "1"])
    assert instantiate(cfg)["data"].dataset_key == make(folder).dataset_key
