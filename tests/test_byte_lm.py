"""ByteLM: tiny fits of every variant, exact per-source bpb, the rare table in checkpoints,
generation with training-time nibbles/acc, and bad input. Tiny files in tmp_path, not the corpora."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch

from lightning_film.cli import main
from lightning_film.data.accumulator import accumulate
from lightning_film.data.bytes import ByteDataModule
from lightning_film.models import ByteLM
from lightning_film.nn.embedding import VARIANTS
from tests.helpers import tiny

REPO = Path(__file__).resolve().parents[1]
TEXT = "Whereas recognition of the inherent dignity — «Ὅλοι οἱ ἄνθρωποι» 人人生而自由 😀 12 \t".encode() * 20
TINY = tiny.BYTE
SEQ = TINY["seq_len"]


@pytest.fixture
def sources(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    a, b = tmp_path / "multi.txt", tmp_path / "plain.txt"
    a.write_bytes(b"\xff\xc3(\x80" + TEXT + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))  # invalid UTF-8 too
    b.write_bytes(b"To be, or not to be, that is the question. " * 40)
    return [str(a), str(b)]


def datamodule(sources: list[str], **kwargs) -> ByteDataModule:
    kwargs = {"seq_len": SEQ, "batch_size": 8, "split_blocks": 10, "val_fraction": 0.1, "test_fraction": 0.1, **kwargs}
    return ByteDataModule(sources, **kwargs)


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    kwargs = {"max_steps": 2, "val_check_interval": 2, "log_every_n_steps": 1, "num_sanity_val_steps": 0, **kwargs}
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def fit(tmp_path: Path, sources: list[str], **model_kwargs) -> tuple[ByteLM, ByteDataModule, L.Trainer]:
    L.seed_everything(0, verbose=False)
    model, dm = tiny.byte_lm(**{**TINY, **model_kwargs}), datamodule(sources)
    t = trainer(tmp_path)
    t.fit(model, dm)
    return model, dm, t


def exact_bpb(model: ByteLM, loader) -> tuple[float, dict[int, float]]:
    """Bits per byte over every real target of a loader, in total and per source."""
    nats, count = {}, {}
    with torch.no_grad():
        for batch in loader:
            nll = model.nll(batch)
            for s in batch["source"].unique().tolist():
                rows = batch["source"] == s
                nats[s] = nats.get(s, 0.0) + float((nll[rows] * batch["mask"][rows]).double().sum())
                count[s] = count.get(s, 0) + int(batch["mask"][rows].sum())
    total = sum(nats.values()) / sum(count.values()) / math.log(2)
    return total, {s: nats[s] / count[s] / math.log(2) for s in nats}


# -- training and metrics ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_fit_logs_exact_bpb_per_source(tmp_path: Path, sources: list[str], variant: str) -> None:
    model, dm, t = fit(tmp_path, sources, variant=variant)
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    for key in ("train/loss", "train/bpb", "val/bpb", "val/bpb/multi.txt", "val/bpb/plain.txt"):
        assert key in logged and math.isfinite(logged[key]), key
    model.eval()
    total, per_source = exact_bpb(model, dm.val_dataloader())
    assert logged["val/bpb"] == pytest.approx(total, rel=1e-5)  # weighted by bytes, not a mean of batch means
    assert logged["val/bpb/multi.txt"] == pytest.approx(per_source[0], rel=1e-5)
    assert logged["val/bpb/plain.txt"] == pytest.approx(per_source[1], rel=1e-5)
    tested = t.test(model, dm, verbose=False)[0]
    assert {"test/bpb", "test/bpb/multi.txt", "test/bpb/plain.txt"} <= set(tested)


def test_block_conditioning_reads_the_same_signal(tmp_path: Path, sources: list[str]) -> None:
    model, dm, _ = fit(tmp_path, sources, variant="nibble_acc", block_conditioner="film")
    batch = next(iter(dm.val_dataloader()))
    x, n, a = batch["bytes"][:, :-1], batch["nibbles"], batch["acc"]
    with torch.no_grad():
        for p in model.net.transformer.final_cond.parameters():
            p.normal_()
        model.net.embed.conditioner.ablated = True  # only the blocks see the signal now
        assert not torch.allclose(model(x, n, a), model(x, (n + 1) % 16, a))
        model.net.embed.conditioner.ablated = False


def test_cli_fits_the_byte_configs_by_short_name(tmp_path: Path, sources: list[str], capsys) -> None:
    overrides = {
        "trainer.default_root_dir": tmp_path,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "model.net.dim": 16,
        "model.net.depth": 1,
        "data.seq_len": SEQ,
        "data.batch_size": 4,
        "data.split_blocks": 10,
        "data.val_fraction": 0.1,
        "data.test_fraction": 0.1,
        "data.sources": "[" + ", ".join(sources) + "]",
    }
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    main(["fit", "--config", str(REPO / "configs/byte/nibble_acc.yaml"), *args])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    for variant in ("byte", "nibble"):  # the other configs parse and differ only in the variant
        config = (REPO / f"configs/byte/{variant}.yaml").read_text()
        assert f"variant: {variant}\n" in config and f"runs/byte/{variant}\n" in config
    # predict without prompts: one line naming the setting, not a traceback
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(REPO / "configs/byte/nibble_acc.yaml"), *args])
    assert exit_info.value.code == 2
    assert "data.prompts" in capsys.readouterr().err
    # predict prints a continuation of each prompt; \xNN escapes give bytes that are not UTF-8
    invalid = "\\\\xff\\\\xfeTo be"  # backslashes doubled for the JSON list
    main(
        [
            "predict",
            "--config",
            str(REPO / "configs/byte/nibble_acc.yaml"),
            *args,
            "--ckpt_path",
            "last",
            "--model.max_new_bytes",
            "7",
            "--model.top_k",
            "3",
            "--data.prompts",
            f'["ROMEO:", "{invalid}"]',
        ]
    )
    out = capsys.readouterr().out
    assert "--- sample 1: 6 prompt bytes + 7 sampled ---\nROMEO:" in out
    assert "--- sample 2: 7 prompt bytes + 7 sampled ---\n\\xff\\xfeTo be" in out


def test_predict_samples_are_seeded_and_saved(tmp_path: Path, sources: list[str]) -> None:
    from lightning_film.callbacks import PrintSamples

    model, _, _ = fit(tmp_path, sources, max_new_bytes=9, temperature=1.0)
    outs = []
    for run in range(2):
        L.seed_everything(1, verbose=False)
        path = tmp_path / f"samples{run}.txt"
        t = trainer(tmp_path, callbacks=[PrintSamples(path=str(path))])
        preds = t.predict(model, datamodule=datamodule(sources, prompts=["To be", "x"]))
        assert [len(p) for p in preds] == [1, 1] and [len(p[0]["sample"]) for p in preds] == [9, 9]
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] and outs[0].startswith(b"To be") and b"\n\nx" in outs[0]
    assert not list(tmp_path.glob(".samples*.tmp"))


# -- the rare table travels with the checkpoint ----------------------------------------------------------
def test_checkpoint_carries_the_rare_table(tmp_path: Path, sources: list[str]) -> None:
    model, dm, t = fit(tmp_path, sources)
    assert torch.equal(model.rare_table, dm.rare_table) and bool(model.rare_table_known)
    assert dm.rare_table.any() and not dm.rare_table.all()
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    fresh = tiny.byte_lm(**TINY)
    assert not bool(fresh.rare_table_known) and not fresh.rare_table.any()
    with pytest.raises(RuntimeError, match="no rare-pair table yet"):
        fresh.generate(b"x", 1)
    loaded = ByteLM.load_from_checkpoint(path)
    assert torch.equal(loaded.rare_table, dm.rare_table) and bool(loaded.rare_table_known)
    assert loaded.generate(b"\xff", 4, seed=0) == model.generate(b"\xff", 4, seed=0)


def test_checkpoint_table_wins_over_the_data(tmp_path: Path, sources: list[str]) -> None:
    _, dm, t = fit(tmp_path, sources)
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    other = datamodule(sources, rare_fraction=0.3)  # another table from the same bytes
    other.setup("test")
    assert not torch.equal(other.rare_table, dm.rare_table)
    with pytest.warns(UserWarning, match="checkpoint's rare-pair table differs.*the checkpoint's wins"):
        trainer(tmp_path).test(tiny.byte_lm(**TINY), other, ckpt_path=path, verbose=False)
    assert torch.equal(other.rare_table, dm.rare_table)
    src = other.sources[0]
    doc_start = torch.from_numpy(src.doc_start(0, len(src.data)))
    expected = accumulate(torch.from_numpy(src.nibbles), dm.rare_table, doc_start=doc_start).numpy()
    assert np.array_equal(src.acc, expected)  # the data's acc follows the checkpoint's table


def test_checkpoints_of_the_layout_before_net_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint written before ``ByteLM.net`` (by tests/fixtures/make_byte_lm_before_net.py at
    commit 195dccb: keys ``embed.*``, ``transformer.*``, ``head.*``, ``pos``) loads, says so in one
    info line, and gives the logits it gave then, through the model and its exported step."""
    from lightning_film.export import inference_step
    from lightning_film.models import byte_lm
    from lightning_film.models.byte_net import ByteNet

    said: list[str] = []  # read the message itself: Lightning's logger need not reach caplog
    monkeypatch.setattr(byte_lm, "rank_zero_info", said.append)
    path = REPO / "tests" / "fixtures" / "byte_lm_before_net.ckpt"
    old = torch.load(path, weights_only=True)
    assert {"embed.byte.weight", "pos", "head.weight", "transformer.final_norm.weight"} <= set(old["state_dict"])
    loaded = ByteLM.load_from_checkpoint(path).eval()
    assert said == ["ByteLM: this checkpoint predates ByteLM.net; its network keys were renamed net.*"]
    assert isinstance(loaded.net, ByteNet) and loaded.net.blocks_conditioned
    assert set(loaded.state_dict()) == {f"net.{k}" if not k.startswith("rare_table") else k for k in old["state_dict"]}
    for key, value in old["state_dict"].items():
        assert torch.equal(loaded.state_dict()[key if key.startswith("rare_table") else f"net.{key}"], value), key
    ids = old["fixture_inputs"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(*ids), old["fixture_logits"], rtol=0, atol=1e-6)
        step = inference_step(loaded, batch_size=2)
        torch.testing.assert_close(step.module(*(i.int() for i in ids)), old["fixture_logits"], rtol=0, atol=1e-6)
    # EMA's copy of the weights is renamed too; a checkpoint of the new layout is left as it is
    checkpoint = {"state_dict": dict(old["state_dict"]), "current_model_state": dict(old["state_dict"])}
    said.clear()
    tiny.byte_lm(**TINY, block_conditioner="film").on_load_checkpoint(checkpoint)
    assert len(said) == 1 and set(checkpoint["current_model_state"]) == set(checkpoint["state_dict"]) == set(
        loaded.state_dict()
    )
    tiny.byte_lm(**TINY, block_conditioner="film").on_load_checkpoint(checkpoint)
    assert len(said) == 1


def test_checkpoints_with_the_networks_arguments_flat_still_load(tmp_path: Path, sources: list[str]) -> None:
    """Before the network was ``net``, its arguments stood flat beside ``lr`` in the hyper-parameters:
    such a checkpoint loads through ``load_model`` (export, reproduce) and through ``--ckpt_path``,
    its network arguments nested under ``net`` (and a ``net`` it already has is left alone)."""
    from lightning_film.checkpoints import load_model, nest_network_arguments

    old = torch.load(REPO / "tests" / "fixtures" / "byte_lm_before_net.ckpt", weights_only=True)
    assert "dim" in old["hyper_parameters"] and "net" not in old["hyper_parameters"]
    cli_written = {
        **old,
        "hyper_parameters": {**old["hyper_parameters"], "_class_path": "lightning_film.models.ByteLM"},
    }
    path = tmp_path / "flat.ckpt"
    torch.save(cli_written, path)
    loaded = load_model(path)
    assert loaded.net.config["block_conditioner"] == "film" and loaded.hparams.net["dim"] == 16
    with torch.no_grad():
        torch.testing.assert_close(loaded(*old["fixture_inputs"]), old["fixture_logits"], rtol=0, atol=1e-6)
    nested = dict(loaded.hparams)
    assert nest_network_arguments(nested, ByteLM) == [] and nested == dict(loaded.hparams)
    overrides = {
        "trainer.default_root_dir": tmp_path / "run",
        "trainer.limit_val_batches": 2,
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "false",
        "data.seq_len": SEQ,
        "data.batch_size": 4,
        "data.split_blocks": 10,
        "data.sources": "[" + ", ".join(sources) + "]",
    }
    args = [a for k, v in overrides.items() for a in (f"--{k}", str(v))]
    # the config's network (dim 128) gives way to the checkpoint's (dim 16), as for any checkpoint
    main(["validate", "--config", str(REPO / "configs/byte/nibble_acc.yaml"), "--ckpt_path", str(path), *args])


def test_the_checkpoints_activation_wins(tmp_path: Path, sources: list[str]) -> None:
    """Exact GELU is the default and is recorded; a checkpoint trained with another activation (or
    written before it was recorded: then DiT's tanh GELU) loads with its own, whatever the config says."""
    from lightning_film.nn.mlp import MLP

    def acts(model: ByteLM) -> set[str]:
        return {m.act.approximate for m in model.modules() if isinstance(m, MLP)}

    model, dm, t = fit(tmp_path, sources, activation="gelu_tanh")
    assert acts(tiny.byte_lm(**TINY)) == {"none"} and acts(model) == {"tanh"}
    path = tmp_path / "tanh.ckpt"
    t.save_checkpoint(path)
    loaded = ByteLM.load_from_checkpoint(path)
    assert acts(loaded) == {"tanh"} and loaded.hparams.net["activation"] == "gelu_tanh"
    fresh = tiny.byte_lm(**TINY)  # the config's default, exact GELU: the checkpoint's tanh wins
    trainer(tmp_path).test(fresh, dm, ckpt_path=path, verbose=False)
    assert acts(fresh) == {"tanh"} and fresh.hparams.net["activation"] == "gelu_tanh"
    with torch.no_grad():
        ids = next(iter(dm.test_dataloader()))
        torch.testing.assert_close(fresh.nll(ids), model.nll(ids))
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["net"]["activation"]  # as written before the argument existed
    old = tiny.byte_lm(**TINY)
    old.on_load_checkpoint(checkpoint)
    assert acts(old) == {"tanh"}


@pytest.mark.parametrize(
    ("init", "std", "attn_out", "mlp_out"),
    [
        ("gpt2", 0.02, 0.02 / math.sqrt(2 * 2), 0.02 / math.sqrt(2 * 2)),  # nanoGPT's
        ("neox", math.sqrt(2 / (5 * 64)), 1 / math.sqrt(64) / 2, math.sqrt(2 / (5 * 64))),  # litgpt's pretraining
    ],
)
def test_named_inits_set_their_stds_and_keep_the_conditioners_identity(init, std, attn_out, mlp_out) -> None:
    torch.manual_seed(0)
    model = tiny.byte_lm(dim=64, depth=2, num_heads=2, seq_len=SEQ, block_conditioner="film", init=init)
    net = model.net
    for block in net.transformer.blocks:
        for layer, want in [(block.attn.qkv, std), (block.attn.proj, attn_out), (block.mlp.fc1, std)]:
            assert abs(layer.weight.std().item() - want) < 0.15 * want and not layer.bias.any()
        assert abs(block.mlp.fc2.weight.std().item() - mlp_out) < 0.15 * mlp_out
        for cond in (block.cond1, block.cond2):  # FiLM's projection is still zero: identity at init
            assert all(not p.any() for p in cond.parameters())
    assert abs(net.embed.byte.weight.std().item() - std) < 0.15 * std and not net.head.bias.any()
    torch.manual_seed(0)
    default = tiny.byte_lm(dim=64, depth=2, num_heads=2, seq_len=SEQ, block_conditioner="film")
    assert default.net.transformer.blocks[0].attn.proj.bias.any()  # PyTorch's layer init, as before


@pytest.mark.parametrize(
    "spec", ["none", {"name": "none"}, "lightning_film.nn.conditioners.simple:NoConditioning", "NoConditioning"]
)
def test_every_spelling_of_no_block_conditioner_leaves_the_blocks_unconditioned(spec) -> None:
    """``{"name": "none"}``, an import path or the class itself mean ``"none"``: the blocks read no
    signal (so variant ``byte`` accepts it) and the model is the one ``"none"`` builds."""
    from lightning_film.export import to_ane_layout
    from lightning_film.nn.conditioners import NoConditioning, conditions_nothing

    spec = NoConditioning if spec == "NoConditioning" else spec
    assert conditions_nothing(spec) and not conditions_nothing("film") and not conditions_nothing({"name": "film"})
    for variant in ("byte", "nibble_acc"):
        torch.manual_seed(0)
        model = tiny.byte_lm(**TINY, variant=variant, block_conditioner=spec).eval()
        torch.manual_seed(0)
        plain = tiny.byte_lm(**TINY, variant=variant, block_conditioner="none").eval()
        assert not model.net.blocks_conditioned and not to_ane_layout(model).net.blocks_conditioned
        ids = torch.randint(0, 16, (2, SEQ)), torch.randint(0, 16, (2, SEQ)), torch.randint(0, 16, (2, SEQ))
        with torch.no_grad():
            torch.testing.assert_close(model(*ids), plain(*ids), rtol=0, atol=0)


# -- generation -----------------------------------------------------------------------------------------
def test_generation_computes_the_datamodule_ids(tmp_path: Path, sources: list[str]) -> None:
    model, dm, _ = fit(tmp_path, sources)
    src = dm.sources[0]
    k = 3 * SEQ  # longer than the context: the window is truncated, the ids carry the history
    prompt = bytes(np.asarray(src.data[:k]))
    assert prompt.startswith(b"\xff\xc3(\x80")  # invalid UTF-8
    stream = model.byte_stream(prompt)
    assert np.array_equal(stream.nibbles.numpy(), src.nibbles[:k])
    assert np.array_equal(stream.acc.numpy(), src.acc[:k])
    model.sample(stream, 2 * SEQ, temperature=1.5, generator=torch.Generator().manual_seed(0))
    full = stream.bytes
    assert len(full) == k + 2 * SEQ and torch.equal(full[:k], torch.frombuffer(bytearray(prompt), dtype=torch.uint8))
    nibbles = dm.scheme(full)  # the whole document at once, as the DataModule computes it
    assert torch.equal(stream.nibbles, nibbles)
    assert torch.equal(stream.acc, accumulate(nibbles, dm.rare_table))


def test_generate_from_invalid_utf8(tmp_path: Path, sources: list[str]) -> None:
    model, *_ = fit(tmp_path, sources)
    model.train()
    prompt = b"\xff\xfe\xc3(\xed\xa0\x80 " * 5  # invalid UTF-8, longer than seq_len
    out = model.generate(prompt, max_new_bytes=10, temperature=0.8, top_k=5, seed=0)
    assert isinstance(out, bytes) and len(out) == 10
    assert model.generate(prompt, 10, temperature=0.8, top_k=5, seed=0) == out  # seeded
    greedy = model.generate(prompt, 3, temperature=0)
    assert greedy == model.generate(prompt, 3, temperature=0)
    top1 = model.generate(prompt, 3, temperature=1.0, top_k=1, seed=5)
    assert top1 == greedy  # top_k=1 is greedy
    assert model.training  # sampling runs in eval mode and restores the mode it found
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(b"", 3)


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "bytes"}, "unknown variant 'bytes'; accepted: byte, nibble, nibble_acc"),
        ({"embed_conditioner": "concat"}, "conditioner 'concat' reads conditioning tokens.*accepted modulating"),
        ({"block_conditioner": "cross_attention"}, "block_conditioner 'cross_attention' reads conditioning tokens"),
        ({"variant": "byte", "block_conditioner": "film"}, "variant 'byte' does not have"),
        ({"nibble_scheme": "utf-8"}, "unknown nibble scheme 'utf-8'; did you mean 'utf8'"),
        ({"positions": "alibi"}, "unknown positions 'alibi'; accepted: 'learned', 'rotary', 'none'"),
        ({"max_lr_steps": 0}, "max_lr_steps must be an integer >= 1, got 0"),
        ({"activation": "relu"}, "unknown activation 'relu'; accepted: gelu, gelu_tanh"),
        ({"init": "xavier"}, "unknown init 'xavier'; accepted: 'torch', 'gpt2', 'neox'"),
    ],
)
def test_bad_model_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.byte_lm(**{**TINY, **kwargs})


def test_a_net_that_is_neither_a_bytenet_nor_its_arguments_is_named() -> None:
    """``net`` is a ByteNet or a mapping of its arguments (how ``hparams.net`` stores it: a checkpoint
    with another mapping is refused in one line naming the argument and what ByteNet takes)."""
    with pytest.raises(ValueError, match=r"ByteLM: net must be a ByteNet or a mapping of its arguments; got int"):
        ByteLM(42)
    with pytest.raises(ValueError, match=r"ByteLM: net has no argument dimm; ByteNet takes: dim, depth, num_heads"):
        ByteLM({"dimm": 16})
    model = ByteLM({"dim": 16, "depth": 1, "num_heads": 2, "seq_len": 8})
    assert model.net.config["dim"] == 16 and model.hparams.net is model.net.config


def test_window_longer_than_the_context(tmp_path: Path, sources: list[str]) -> None:
    with pytest.raises(ValueError, match=r"data seq_len=32 is longer than the model's context max_seq_len=16"):
        trainer(tmp_path).fit(tiny.byte_lm(**TINY), datamodule(sources, seq_len=2 * SEQ))
    with pytest.raises(ValueError, match=r"N <= seq_len=16, got \(1, 17\)"):
        tiny.byte_lm(**TINY)(torch.zeros(1, SEQ + 1, dtype=torch.long), None, None)


def test_nibble_scheme_must_match_the_data(tmp_path: Path, sources: list[str]) -> None:
    with pytest.raises(ValueError, match="data's nibble_scheme='high_nibble' differs from the model's"):
        trainer(tmp_path).fit(tiny.byte_lm(**TINY), datamodule(sources, nibble_scheme="high_nibble"))


def test_missing_ids_name_the_variant() -> None:
    with pytest.raises(ValueError, match="variant='nibble_acc'.*needs nibble_ids.*got nibble_ids=None"):
        tiny.byte_lm(**TINY)(torch.zeros(1, 4, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tiny.byte_lm(**{**TINY, "variant": "byte"})(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 256)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [([], "non-empty strings"), (["ok", ""], "non-empty strings"), (["bad \\x4"], "bad escape"), (["\\\\"], None)],
)
def test_prompts_are_checked(sources: list[str], prompts: list[str], message: str | None) -> None:
    if message is None:
        assert datamodule(sources, prompts=prompts)._prompts == [b"\\"]
        return
    with pytest.raises(ValueError, match=message):
        datamodule(sources, prompts=prompts)
