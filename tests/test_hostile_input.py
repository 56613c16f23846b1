"""Hostile input (issue 14): files and settings made to run code, exhaust the machine, clobber or
leak, each ending in one ``lightning-film: error:`` line. Row ids start with the issue's class
(``c1-`` ... ``c8-``); ``python -m benchmarks.reliability`` counts them per class. SIGTERM (class 5)
is tested in tests/test_resume.py, where a fit runs in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_film.cli import main
from lightning_film.data.shards import read_manifest
from tests.test_bad_input import (
    CONFIGS,
    Case,
    Env,
    Trained,
    _api,
    _byte_dm,
    _shard,
    run_case,
    trained,  # noqa: F401  (the module-scoped fixture, shared)
)


def _hparams(env: Env, name: str, **changes: object) -> str:
    """The fixture's byte checkpoint with hyper_parameters changed (a value None: replaced whole)."""
    checkpoint = torch.load(env.trained.byte_ckpt, map_location="cpu", weights_only=True)
    if "whole" in changes:
        checkpoint["hyper_parameters"] = changes["whole"]
    else:
        checkpoint["hyper_parameters"].update(changes)
    torch.save(checkpoint, env.tmp / name)
    return str(env.tmp / name)


def _zip_bomb(env: Env) -> str:
    """1 MB of zeros deflated into a ~1 kB zip that looks like a checkpoint."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (1 << 20))
    return env.file("bomb.ckpt", buffer.getvalue())


def _huge_npy_header(folder: Path) -> None:
    """Shard 1's frames entry re-written with a header declaring a 1 TiB array (a few bytes of data)."""
    shard = _shard(folder)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (1 << 40,)})
    with zipfile.ZipFile(shard) as archive:
        actions = archive.read("actions.npy")
    with zipfile.ZipFile(shard, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("frames.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("actions.npy", actions)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1]["bytes"] = shard.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _duplicate_shard(m: dict) -> None:
    m["shards"] = [m["shards"][0], m["shards"][0]]


_LAUGHS = (
    "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    + "model:\n  init_args:\n    dim: *i\n"
)

HOSTILE: list[Case] = [
    # 1: checkpoints by URL
    Case(
        "c1-ckpt-url",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", "http://127.0.0.1:9/x.ckpt"),
        ("'http://127.0.0.1:9/x.ckpt' is remote", "local"),
    ),
    Case(
        "c1-ckpt-url-not-ckpt-suffix",
        lambda e: e.byte("fit", "byte.yaml", "--ckpt_path", "https://h/model"),
        ("is remote",),
    ),
    Case(
        "c1-init-from-url",
        lambda e: e.world("fit", "filmcond_pre.yaml", "--model.init_from", "s3://b/last.ckpt"),
        ("init_from checkpoint 's3://b/last.ckpt' is remote",),
    ),
    Case(
        "c1-export-url",
        lambda e: ["export", "--ckpt", "http://127.0.0.1:9/x.ckpt", "--to", "coreml", "--out", "ship/m.mlpackage"],
        ("is remote",),
        absent=("ship",),
    ),
    # 2: code named by a checkpoint's hyper-parameters
    Case(
        "c2-hparam-import-path",
        lambda e: e.byte("test", "nibble_acc.yaml", "--ckpt_path", _hparams(e, "h.ckpt", nibble_scheme="sys:exit")),
        ("names code to import", "nibble_scheme='sys:exit'"),
    ),
    Case(
        "c2-hparam-import-path-abort",
        lambda e: e.byte("test", "nibble_acc.yaml", "--ckpt_path", _hparams(e, "h.ckpt", embed_conditioner="os:abort")),
        ("embed_conditioner='os:abort'",),
    ),
    Case(
        "c2-hparam-mapping-spec",
        lambda e: e.byte(
            "fit", "nibble_acc.yaml", "--ckpt_path", _hparams(e, "h.ckpt", embed_conditioner={"name": "os:abort"})
        ),
        ("embed_conditioner.name='os:abort'",),
    ),
    Case(
        "c2-hparam-class-path",
        lambda e: e.byte(
            "test", "byte.yaml", "--ckpt_path", _hparams(e, "h.ckpt", normalizer={"class_path": "antigravity.X"})
        ),
        ("normalizer.class_path",),
    ),
    Case(
        "c2-export-hparam-import-path",
        lambda e: [
            "export",
            "--ckpt",
            _hparams(e, "h.ckpt", nibble_scheme="os:abort"),
            "--to",
            "coreml",
            "--out",
            "ship/m.mlpackage",
        ],
        ("nibble_scheme='os:abort'",),
        absent=("ship",),
    ),
    Case(
        "c2-export-unloaded-class",
        lambda e: [
            "export",
            "--ckpt",
            _hparams(e, "h.ckpt", _class_path="antigravity.Fly"),
            "--to",
            "coreml",
            "--out",
            "ship/m.mlpackage",
        ],
        ("never chooses which code to import",),
        absent=("ship",),
    ),
    # 3: --ckpt_path last
    Case(
        "c3-last-without-a-run",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", "last"),
        ("--ckpt_path last: no last checkpoint", "untrained model"),
    ),
    Case(
        "c3-last-damaged",
        lambda e: (e.random_bytes("run/checkpoints/last.ckpt"), e.byte("test", "byte.yaml", "--ckpt_path", "last"))[1],
        ("last.ckpt' is not a PyTorch checkpoint",),
    ),
    Case(
        "c3-last-of-the-other-model",
        lambda e: (
            e.file("run/checkpoints/last.ckpt", e.trained.world_ckpt.read_bytes()),
            e.byte("validate", "byte.yaml", "--ckpt_path", "last"),
        )[1],
        ("holds a WorldModel", "ByteLM"),
    ),
    Case(
        "c3-last-other-settings",
        lambda e: (
            e.file("run/checkpoints/last.ckpt", e.trained.byte_ckpt.read_bytes()),
            e.byte("validate", "nibble_acc.yaml", "--ckpt_path", "last", "--model.net.dim", "24"),
        )[1],
        ("weights do not fit this ByteLM", "dim=16 there, 24 here"),
    ),
    Case(
        "c3-last-other-settings-world",
        lambda e: (
            e.file("run/checkpoints/last.ckpt", e.trained.world_ckpt.read_bytes()),
            e.world("test", "filmcond.yaml", "--ckpt_path", "last", "--model.net.depth", "2"),
        )[1],
        ("weights do not fit this WorldModel", "is missing from the checkpoint", "depth=1 there, 2 here"),
    ),
    Case(
        "c3-last-pickled-object",
        lambda e: (
            os.makedirs(e.tmp / "run/checkpoints"),
            e.pickled_object("run/checkpoints/last.ckpt"),
            e.byte("fit", "byte.yaml", "--ckpt_path", "last"),
        )[2],
        ("it pickles",),
    ),
    # 4: small files, huge demands
    Case("c4-npy-header-1tib", lambda e: e.data_dir(_huge_npy_header), ("'frames' is uint8 (1099511627776,)",)),
    Case(
        "c4-billion-laughs-config",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("l.yaml", _LAUGHS)),
        ("l.yaml' is refused", "more than 100000 values"),
    ),
    Case(
        "c4-deep-yaml",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("d.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n")),
        ("d.yaml' is refused", "nested deeper"),
    ),
    Case(
        "c4-deep-manifest",
        lambda e: e.data_dir(lambda d: (d / "manifest.json").write_text("[" * 100000)),
        ("manifest.json is not readable JSON",),
    ),
    Case(
        "c4-zip-bomb-checkpoint",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", _zip_bomb(e)),
        ("bomb.ckpt' holds compressed entries", "refused before anything is inflated"),
    ),
    Case(
        "c4-record-frame-size",
        lambda e: ["record", "--frame-size", "100000", "--out", "out"],
        ("frame_size must be an integer >= 16 and <= 1024", "100000"),
        absent=("out",),
    ),
    Case(
        "c4-record-episode-memory",
        lambda e: ["record", "--frame-size", "1024", "--episode-length", "1000", "--out", "out"],
        ("GiB in memory", "lower episode_length or frame_size"),
        absent=("out",),
    ),
    Case(
        "c4-record-option-laughs",
        lambda e: ["record", "--option", "k=" + "[" * 3000, "--out", "out"],
        ("--option k",),
        absent=("out",),
    ),
    # 6: clobbering and leakage
    Case(
        "c6-same-file-twice",
        lambda e: e.byte("fit", "byte.yaml", "--data.sources", f"[{e.file('text.txt', 'x' * 2000)}, ./text.txt]"),
        ("both read", "list each file once"),
    ),
    Case(
        "c6-file-and-its-folder",
        lambda e: e.byte(
            "fit", "byte.yaml", "--data.sources", f"[{e.file('docs/a.txt', 'x' * 2000)}, {e.tmp / 'docs'}]"
        ),
        ("both read",),
    ),
    Case(
        "c6-export-over-a-foreign-json",
        lambda e: (
            e.file("ship/m.json", '{"mine": 1}'),
            ["export", "--ckpt", str(e.trained.byte_ckpt), "--to", "coreml", "--out", "ship/m.mlpackage"],
        )[1],
        ("which is not an export report", "ship/m.json"),
        untouched=("ship/m.json",),
        absent=("ship/m.mlpackage",),
    ),
    Case(
        "c6-duplicate-shard-entries", lambda e: e.data_dir(lambda d: _manifest(d, _duplicate_shard)), ("listed twice",)
    ),
    Case(
        "c7-root-dir-on-sysfs",
        lambda e: e.byte("fit", "byte.yaml", "--trainer.default_root_dir", "/sys/kernel/lf-run"),
        ("trainer.default_root_dir '/sys/kernel/lf-run' cannot be written",),
    ),
    Case(
        "c4-billion-laughs-inline",
        lambda e: e.byte("fit", "byte.yaml", "--config", _LAUGHS),
        ("the value of --config is refused", "more than 100000 values"),
    ),
    Case(
        "c4-billion-laughs-option",
        lambda e: e.byte("fit", "byte.yaml", "--trainer.callbacks", _LAUGHS),
        ("the value of --trainer.callbacks is refused",),
    ),
    Case(
        "c6-yaml-key-twice-inline",
        lambda e: e.byte("fit", "byte.yaml", "--trainer", "{max_steps: 1, max_steps: 2}"),
        ("the value of --trainer is refused", "key 'max_steps' is given twice"),
    ),
    Case(
        "c6-yaml-key-twice",
        lambda e: e.byte(
            "fit", "byte.yaml", "--config", e.config("t.yaml", "trainer:\n  max_steps: 1\ntrainer:\n  max_epochs: 1\n")
        ),
        ("key 'trainer' is given twice",),
    ),
    Case(
        "c6-lr-inf",
        lambda e: e.byte("fit", "byte.yaml", "--config", e.config("lr.yaml", "model:\n  init_args:\n    lr: .inf\n")),
        ("need finite lr > 0", "lr=inf"),
    ),
    Case(
        "c6-world-lr-nan",
        lambda e: e.world(
            "fit", "base.yaml", "--config", e.config("lr.yaml", "model:\n  init_args:\n    weight_decay: .nan\n")
        ),
        ("finite weight_decay >= 0", "nan"),
    ),
    # 7: one line, not a traceback
    Case(
        "c7-checkpoint-folder",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", e.folder("dir.ckpt")),
        ("dir.ckpt' is a folder",),
    ),
    Case(
        "c7-checkpoint-fifo",
        lambda e: (os.mkfifo(e.tmp / "p.ckpt"), e.byte("test", "byte.yaml", "--ckpt_path", str(e.tmp / "p.ckpt")))[1],
        ("p.ckpt' is not a regular file",),
    ),
    Case(
        "c7-config-fifo",
        lambda e: (os.mkfifo(e.tmp / "p.yaml"), e.byte("fit", "byte.yaml", "--config", str(e.tmp / "p.yaml")))[1],
        ("p.yaml' is not a regular file",),
    ),
    Case(
        "c7-unknown-hparams",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", _hparams(e, "h.ckpt", bogus=1)),
        ("does not take (bogus)", "Accepted: net, nibble_scheme"),
    ),
    Case(
        "c7-list-hparams",
        lambda e: e.byte("test", "byte.yaml", "--ckpt_path", _hparams(e, "h.ckpt", whole=[1, 2])),
        ("hyper_parameters are list",),
    ),
    Case(
        "c7-record-option-bad-yaml",
        lambda e: ["record", "--option", "k=[1", "--out", "out"],
        ("--option k: '[1' is not a YAML value",),
        absent=("out",),
    ),
    Case(
        "c6-api-dm-same-file",
        _api(lambda e: _byte_dm(e, sources=[e.file("t.txt", "x" * 999), f"{e.tmp}/./t.txt"])),
        ("both read",),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in HOSTILE])
def test_hostile_input_is_one_clear_line(
    case: Case,
    trained: Trained,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_case(case, trained, tmp_path, monkeypatch, capsys)


def test_c7_damaged_run_result_is_one_line(tmp_path: Path) -> None:
    from lightning_film.errors import UsageError
    from lightning_film.reproduce.runner import Run, execute

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "result.json").write_text('{"metrics": ')
    with pytest.raises(UsageError, match=r"result.json' is damaged .*delete it and rerun"):
        execute(Run("k", tmp_path / "c.yaml"), tmp_path)


def test_c7_poisoned_kid_cache_is_recomputed(tmp_path: Path) -> None:
    from lightning_film.metrics.kid import build_kid_feature, real_features

    extractor = build_kid_feature("tiny")
    frames = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    good = real_features(extractor, frames, "d", "val", directory=tmp_path)
    (cache,) = tmp_path.glob("*.pt")
    torch.save(torch.full((4, good.shape[1]), 1e18), cache)
    with pytest.warns(UserWarning, match="finite features; recomputing"):
        again = real_features(extractor, frames, "d", "val", directory=tmp_path)
    assert torch.allclose(again, good)
    torch.save(torch.zeros(4, good.shape[1] + 1), cache)  # another width
    with pytest.warns(UserWarning, match="recomputing"):
        assert torch.allclose(real_features(extractor, frames, "d", "val", directory=tmp_path), good)


def test_c8_corpus_changing_while_read_is_an_error_not_sigbus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources are read, never memory-mapped; a file cut short between stat and read is named."""
    from lightning_film.data import bytes as bytes_module

    text = tmp_path / "big.txt"
    text.write_bytes(b"x" * 5000)
    real_stat = Path.stat
    monkeypatch.setattr(
        Path,
        "stat",
        lambda self, **kw: (
            os.stat_result((*real_stat(self, **kw)[:6], 9000, *real_stat(self, **kw)[7:]))
            if self == text
            else real_stat(self, **kw)
        ),
    )
    with pytest.raises(ValueError, match=r"changed while being read \(5000 bytes, 9000 a moment before\)"):
        bytes_module.read_source(str(text))
    monkeypatch.undo()
    assert not isinstance(bytes_module.read_source(str(text)).data, np.memmap)


def test_c4_manifest_checked_before_allocating(tmp_path: Path, trained: Trained) -> None:  # noqa: F811
    folder = Path(__import__("shutil").copytree(trained.recording, tmp_path / "rec"))
    _manifest(folder, lambda m: (m.update(episodes=10**15), m["shards"][1].update(episodes=10**15 - 4)))
    read_manifest(folder)  # the manifest alone is consistent; its shards are not
    with pytest.raises(ValueError, match="episodes-00001.npz"):
        from lightning_film.data.shards import load_episodes

        load_episodes(folder)


assert CONFIGS and main  # re-exported helpers the rows use
