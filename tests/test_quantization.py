"""Quantization by role on torchao: roles from the module tree, schemes, PTQ on a copy (float model and
checkpoints untouched), QAT (prepare from a step, forward arguments, validation leaves the fake-quant
state alone, checkpoints resume, convert, test from a checkpoint after conversion), and bad input.
Tiny ByteLMs on tiny files: the whole file runs in seconds."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_film import Transformer, list_conditioners
from lightning_film.callbacks import QuantizationCallback
from lightning_film.data.bytes import ByteDataModule
from lightning_film.models import ByteLM
from lightning_film.nn import Conditioner
from lightning_film.quantization import (
    ROLES,
    MissingExtraError,
    Scheme,
    assign_roles,
    effective_group_size,
    is_prepared,
    parse_roles,
    plan,
    quantize,
)
from lightning_film.quantization import torchao as qt
from tests.helpers import tiny

torchao = pytest.importorskip("torchao")

SEQ = 16
TINY = {"dim": 32, "depth": 1, "num_heads": 2, "seq_len": SEQ, "nibble_dim": 8, "acc_dim": 4, "warmup_steps": 1}


@pytest.fixture
def sources(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    a, b = tmp_path / "multi.txt", tmp_path / "plain.txt"
    a.write_bytes(
        "Whereas «Ὅλοι οἱ ἄνθρωποι» 人人生而自由 😀 12 \t".encode() * 30
        + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    )
    b.write_bytes(b"To be, or not to be, that is the question. " * 40)
    return [str(a), str(b)]


def datamodule(sources: list[str]) -> ByteDataModule:
    return ByteDataModule(sources, seq_len=SEQ, batch_size=8, split_blocks=10, val_fraction=0.1, test_fraction=0.1)


def trainer(root: Path, callbacks: list | None = None, **kwargs) -> L.Trainer:
    kwargs = {
        "max_steps": 4,
        "val_check_interval": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
        "enable_checkpointing": False,
        **kwargs,
    }
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks or [],
        **kwargs,
    )


def model(**kwargs) -> ByteLM:
    L.seed_everything(0, verbose=False)
    return tiny.byte_lm(**{**TINY, "block_conditioner": "film", **kwargs})


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert type(b[k]) is torch.Tensor and torch.equal(a[k], b[k]), k


# -- roles ------------------------------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self, conditioner: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.transformer = Transformer(16, 1, 2, cond_dim=8, conditioner=conditioner)
        self.head = nn.Linear(16, 10)


@pytest.mark.parametrize("name", list_conditioners())
def test_every_linear_inside_a_conditioner_has_the_conditioner_role(name: str) -> None:
    net = _Tiny(name)
    roles = assign_roles(net)
    inside = {
        f"{c}.{n}".strip(".")
        for c, m in net.named_modules()
        if isinstance(m, Conditioner)
        for n, sub in m.named_modules()
        if isinstance(sub, nn.Linear)
    }
    for fqn, role in roles.items():
        expected = "conditioner" if fqn in inside else {"embed": "embedding", "head": "head"}.get(fqn, "backbone")
        assert role == expected, fqn
    assert set(roles.values()) >= {"embedding", "backbone", "head"}


def test_byte_lm_roles() -> None:
    roles = assign_roles(model())
    assert roles["net.embed.byte"] == roles["net.embed.nibble"] == roles["net.embed.acc"] == "embedding"
    assert roles["net.embed.conditioner.scale.0"] == roles["net.transformer.blocks.0.cond1.shift.0"] == "conditioner"
    assert roles["net.transformer.final_cond.scale.0"] == "conditioner"
    assert roles["net.transformer.blocks.0.attn.qkv"] == roles["net.transformer.blocks.0.mlp.fc2"] == "backbone"
    assert roles["net.head"] == "head"


# -- schemes ----------------------------------------------------------------------------------------
def test_schemes_as_presets_mappings_and_text() -> None:
    film = {"conditioner": "int4", "backbone": "int8", "embedding": "int8", "head": "int8"}
    assert parse_roles("int4_film") == film
    assert parse_roles({"conditioner": "int4", "*": "int8"}) == film  # the seed's path, one line
    assert parse_roles("conditioner=int4,*=int8") == film
    assert Scheme.parse(film).label == "int4_film"
    assert parse_roles({"backbone": "int8"}) == {
        "conditioner": "float",
        "backbone": "int8",
        "embedding": "float",
        "head": "float",
    }
    assert Scheme.parse({"backbone": "int8", "conditioner": "int4"}).label == "c4-b8-ef-hf"
    assert parse_roles("palettize4", "coreml") == dict.fromkeys(ROLES, "palettize4")
    assert effective_group_size(48, 32) == 16 and effective_group_size(64, 32) == 32
    assert effective_group_size(12, 8) is None and effective_group_size(16, 32) == 16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("int3", "unknown torchao weight scheme 'int3'; accepted presets: int8, int4, int4_film"),
        ("film=int4", "unknown role 'film'; accepted roles: conditioner, backbone, embedding, head"),
        (
            {"conditioner": "int2"},
            "unknown torchao format 'int2' for role 'conditioner'; accepted formats: float, int8, int4",
        ),
        ("conditioner=int4,x", "bad role setting .x. in"),
    ],
)
def test_unknown_names_list_the_accepted_ones(spec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scheme.parse(spec)
    with pytest.raises(ValueError, match="QuantizationCallback: " + message.split(";")[0]):
        QuantizationCallback(weights=spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "awq"}, "unknown mode 'awq'; accepted modes: ptq, qat"),
        ({"start_step": 5}, "use them with mode='qat'"),
        ({"mode": "qat", "start_step": -1}, "start_step must be an integer >= 0"),
        ({"group_size": 0}, "group_size must be an integer >= 1"),
        ({"weights": {"conditioner": "float"}}, "leaves every role in float"),
        ({"label": "a/b"}, "label must be a non-empty name"),
    ],
)
def test_bad_callback_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantizationCallback(**kwargs)


# -- per-role bit widths ------------------------------------------------------------------------------
def test_int4_film_quantizes_per_role_and_leaves_the_original_alone() -> None:
    float_model = model()
    before = state(float_model)
    copy = model()
    entries = {e.fqn: e for e in quantize(copy, Scheme.parse("int4_film", group_size=8))}
    assert_same_state(before, state(float_model))
    for fqn, module in copy.named_modules():
        if fqn not in entries:
            continue
        weight, e = module.weight, entries[fqn]
        assert type(weight).__name__ == "IntxUnpackedToInt8Tensor", fqn
        if e.role == "conditioner":  # int4, one scale per 8 weights of a row (cond_dim 12 -> per channel)
            assert weight.target_dtype == torch.int4
            assert weight.block_size == (1, e.group_size or e.shape[-1])
        else:  # int8, one scale per output channel / embedding row
            assert weight.target_dtype == torch.int8 and weight.block_size == (1, e.shape[-1])
    roles = {e.role for e in entries.values()}
    assert roles == {"conditioner", "backbone", "embedding", "head"}
    assert entries["net.transformer.blocks.0.cond1.scale.0"].group_size is None  # 12 inputs: gcd(12, 8) = 4 < 8
    assert entries["net.transformer.blocks.0.mlp.fc1"].format == "int8"
    ids = torch.randint(0, 16, (2, SEQ))
    with torch.no_grad():
        assert (copy(ids, ids, ids) - float_model(ids, ids, ids)).abs().max() < 0.05
    sizes = qt.size_bytes(copy, list(entries.values()))
    assert sizes["packed"] < qt.size_bytes(float_model)["packed"] / 3


# -- PTQ ------------------------------------------------------------------------------------------------
#: bf16-mixed is what lightning-film trains in where the chip has bf16 units
PRECISIONS = pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])


@PRECISIONS
def test_ptq_logs_quantized_metrics_beside_float_ones_and_changes_no_checkpoint(
    tmp_path: Path, sources, precision: str
) -> None:
    saved = {}
    for run, callbacks in (
        ("plain", []),
        ("ptq", [QuantizationCallback("ptq", "int8"), QuantizationCallback("ptq", "int4_film")]),
    ):
        m, t = model(), trainer(tmp_path / run, callbacks, precision=precision)
        t.fit(m, datamodule(sources))
        path = tmp_path / f"{run}.ckpt"
        t.save_checkpoint(path)
        saved[run] = (path, state(m), dict(t.callback_metrics))
    metrics = saved["ptq"][2]
    float_keys = [k for k in metrics if k.startswith("val/bpb") and "_" not in k.split("/")[1]]
    assert "val/bpb" in float_keys and len(float_keys) > 1  # the total and per source
    for label in ("int8", "int4_film"):
        for key in float_keys:
            quantized = metrics[key.replace("bpb", f"bpb_{label}", 1)]
            assert math.isfinite(quantized) and abs(float(quantized) - float(metrics[key])) < 0.5, (label, key)
    # the float weights and checkpoints are what they would be without the callback, byte for byte
    assert_same_state(saved["plain"][1], saved["ptq"][1])
    assert digest(saved["plain"][0]) == digest(saved["ptq"][0])


def test_ptq_on_test_returns_quantized_test_metrics(tmp_path: Path, sources) -> None:
    m, dm = model(), datamodule(sources)
    trainer(tmp_path).fit(m, dm)
    before = state(m)
    callback = QuantizationCallback("ptq", {"conditioner": "int4", "*": "int8"}, group_size=8, label="film4")
    result = trainer(tmp_path, [callback]).test(m, dm, verbose=False)[0]
    assert {"test/bpb", "test/bpb_film4", "test/bpb_film4/multi.txt"} <= set(result)
    assert abs(result["test/bpb_film4"] - result["test/bpb"]) < 0.5
    assert_same_state(before, state(m))


class _Probe(Callback):
    """Records, before each training batch, whether the model is fake-quantized, and hashes a file."""

    def __init__(self, watch: Path | None = None) -> None:
        self.prepared: dict[int, bool] = {}
        self.watch, self.digest, self.state = watch, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.prepared[trainer.global_step] = is_prepared(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.state = state(pl_module)
        if self.watch is not None:
            self.digest = digest(self.watch)


def test_a_failing_quantization_leaves_model_and_checkpoint_intact(tmp_path: Path, sources, monkeypatch) -> None:
    real = qt._apply

    def fail_midway(module, entries, step):
        real(module, entries[:2], step)  # the copy is half quantized...
        raise RuntimeError("simulated failure")  # ...when it breaks

    monkeypatch.setattr(qt, "_apply", fail_midway)
    ckpt_dir = tmp_path / "ckpt"
    probe = _Probe(ckpt_dir / "last.ckpt")
    save = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=2)
    m = model()
    t = trainer(
        tmp_path,
        [QuantizationCallback("ptq", "int4", save_path=str(tmp_path / "q.pt")), probe, save],
        enable_checkpointing=True,
    )
    with pytest.raises(
        RuntimeError, match="with int4 failed .*simulated failure.*float model and its checkpoints are untouched"
    ):
        t.fit(m, datamodule(sources))
    assert digest(ckpt_dir / "last.ckpt") == probe.digest
    assert_same_state(probe.state, state(m))
    assert not (tmp_path / "q.pt").exists()
    assert not [p for d in (tmp_path, ckpt_dir) for p in d.iterdir() if p.name.startswith(".")]  # no temporary file


def test_missing_torchao_names_the_extra(tmp_path: Path, sources, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'lightning_film\[quant\]'"):
        trainer(tmp_path, [QuantizationCallback()]).fit(model(), datamodule(sources))


def test_a_model_without_the_roles_is_an_error(tmp_path: Path, sources) -> None:
    callback = QuantizationCallback(weights={"conditioner": "int4"})
    with pytest.raises(
        ValueError, match="no module in the roles this scheme quantizes \\(conditioner\\); its roles: conditioner: 0"
    ):
        trainer(tmp_path, [callback]).fit(model(variant="byte", block_conditioner="none"), datamodule(sources))


# -- QAT ------------------------------------------------------------------------------------------------
@PRECISIONS
def test_qat_trains_fake_quantized_from_a_step_then_converts(tmp_path: Path, sources, precision: str) -> None:
    callback, probe = QuantizationCallback("qat", "int4_film", group_size=8, start_step=2), _Probe()
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    m, dm = model(), datamodule(sources)
    t = trainer(tmp_path, [callback, probe, save], enable_checkpointing=True, precision=precision)
    t.fit(m, dm)  # ByteLM's forward takes three tensors: they pass through untouched
    assert probe.prepared == {0: False, 1: False, 2: True, 3: True}
    assert not is_prepared(m)  # the training model is plain again, with the QAT-trained weights
    quantized = callback.quantized_model
    assert type(quantized.net.transformer.blocks[0].cond1.scale[0].weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert math.isfinite(float(t.callback_metrics["val/bpb_int4_film"]))
    assert callback.sizes["int4_film"]["packed"] < callback.sizes["float"]["packed"]
    # a checkpoint written while fake quantization was on loads into a plain model; test after conversion works
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    state_key = next(k for k in ckpt["callbacks"] if k.startswith("QuantizationCallback"))
    assert ckpt["callbacks"][state_key] == {
        "mode": "qat",
        "scheme": callback.scheme.as_dict(),
        "prepared": True,
        "prepared_at_step": 2,
    }
    tester = trainer(tmp_path, [callback], precision=precision)
    result = tester.test(m, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)[0]
    assert math.isfinite(result["test/bpb"]) and math.isfinite(result["test/bpb_int4_film"])


def test_qat_from_an_epoch(tmp_path: Path, sources) -> None:
    callback, probe = QuantizationCallback("qat", "int8", start_epoch=1, evaluate=False), _Probe()
    trainer(tmp_path, [callback, probe], max_steps=4, limit_train_batches=2, val_check_interval=None).fit(
        model(), datamodule(sources)
    )
    assert probe.prepared == {0: False, 1: False, 2: True, 3: True}


def test_validation_does_not_update_the_fake_quant_state(tmp_path: Path, sources) -> None:
    m, dm = model(), datamodule(sources)
    callback = QuantizationCallback("qat", "int4_film", group_size=8)
    qt.prepare_qat(m, callback.scheme)
    dm.setup("fit")
    m.nll(next(iter(dm.train_dataloader())))  # a training forward caches the scales
    quantizers = qt.fake_quantizers(m)
    assert quantizers
    cached = {name: (q.scale, q.zero_point) for name, q in quantizers.items()}
    trainer(tmp_path, [callback]).validate(m, dm, verbose=False)
    for name, q in qt.fake_quantizers(m).items():
        assert q.scale is cached[name][0] and q.zero_point is cached[name][1], name
    # without the callback, the same validation does overwrite them: the test above can fail
    trainer(tmp_path).validate(m, dm, verbose=False)
    assert any(q.scale is not cached[name][0] for name, q in qt.fake_quantizers(m).items())


def test_qat_state_resumes_from_a_checkpoint(tmp_path: Path, sources) -> None:
    def qat() -> QuantizationCallback:
        return QuantizationCallback("qat", "int4_film", group_size=8, start_step=2, evaluate=False)

    whole = model(max_lr_steps=6)  # the same learning-rate schedule for the short first run
    trainer(tmp_path / "whole", [qat()], max_steps=6, val_check_interval=3).fit(whole, datamodule(sources))

    ckpt_dir = tmp_path / "ckpt"
    save = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=3)
    trainer(tmp_path / "first", [qat(), save], max_steps=3, val_check_interval=3, enable_checkpointing=True).fit(
        model(max_lr_steps=6), datamodule(sources)
    )
    callback, probe = qat(), _Probe()
    resumed = model(max_lr_steps=6)
    t = trainer(tmp_path / "first", [callback, probe], max_steps=6, val_check_interval=3)
    t.fit(resumed, datamodule(sources), ckpt_path=ckpt_dir / "last.ckpt")
    assert probe.prepared == {3: True, 4: True, 5: True}  # on before the first resumed step
    assert callback._prepared_at == 2
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    # resuming with another scheme is refused
    with pytest.raises(ValueError, match="trained with QAT weights=.*resume with the same settings"):
        trainer(tmp_path / "first", [QuantizationCallback("qat", "int8", evaluate=False)], max_steps=6).fit(
            model(), datamodule(sources), ckpt_path=ckpt_dir / "last.ckpt"
        )


def test_plan_is_a_dry_run() -> None:
    entries = plan(model(), Scheme.parse({"head": "int4"}, group_size=16))
    assert [(e.fqn, e.format, e.group_size) for e in entries] == [("net.head", "int4", 16)]


def test_world_model_roles_and_a_quantized_copy() -> None:
    from lightning_film.models import WorldDenoiser, WorldModel

    torch.manual_seed(0)
    net = WorldDenoiser(frame_size=16, context_frames=2, num_actions=4, patch_size=4, dim=32, depth=1, num_heads=2)
    world = WorldModel(net, kid_feature="tiny")
    with torch.no_grad():
        for p in world.parameters():
            p.add_(0.1 * torch.randn_like(p))
    roles = assign_roles(world)
    assert roles["net.action_embed"] == "embedding" and roles["net.head"] == "head"
    assert (
        roles["net.patch_embed"]
        == roles["net.time_embed.mlp.0"]
        == roles["net.transformer.blocks.0.attn.qkv"]
        == "backbone"
    )
    assert (
        roles["net.transformer.blocks.0.cond1.scale.0"] == roles["net.transformer.final_cond.shift.0"] == "conditioner"
    )
    copy = WorldModel(**world.hparams)
    copy.load_state_dict(world.state_dict())
    quantize(copy, Scheme.parse("int4_film"))
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 2, 3, 16, 16, generator=g) * 2 - 1
    t, a = torch.tensor([10, 900]), torch.tensor([0, 4])
    with torch.no_grad():
        expected, got = world(x, t, ctx, a), copy(x, t, ctx, a)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()  # int8 backbone, int4 FiLM


def test_ptq_on_validate_scores_a_fresh_copy(tmp_path: Path, sources) -> None:
    m, dm = model(), datamodule(sources)
    trainer(tmp_path).fit(m, dm)
    plain = trainer(tmp_path).validate(m, dm, verbose=False)[0]
    # the copy is made while the float model's metric holds this epoch's sums: they must not leak into it
    result = trainer(tmp_path, [QuantizationCallback("ptq", "int8")]).validate(m, dm, verbose=False)[0]
    assert result["val/bpb"] == pytest.approx(plain["val/bpb"])
    assert abs(result["val/bpb_int8"] - result["val/bpb"]) < 0.05
    m.setup = lambda stage: None  # a model that builds its metrics once, in __init__, not in setup
    again = trainer(tmp_path, [QuantizationCallback("ptq", "int8")]).validate(m, dm, verbose=False)[0]
    assert again["val/bpb_int8"] == pytest.approx(result["val/bpb_int8"], rel=1e-6)
