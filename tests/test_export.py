"""Core ML export: fixed-shape inference steps, fp16 / CPU_AND_NE ML programs, weight compression per role
(small FiLM projections included), the report read back from the saved package, the CLI and callback,
and failures that leave checkpoints byte-identical and no partial file. Core ML cannot run on Linux: the
numerics check against PyTorch runs on macOS only."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_film import cli
from lightning_film.callbacks import ANEExportCallback, QuantizationCallback
from lightning_film.data.bytes import ByteDataModule
from lightning_film.export import ExportError, InferenceStep, TensorSpec, export_coreml, inference_step, report_path
from lightning_film.export import coreml as coreml_module
from lightning_film.models import ByteLM
from tests.helpers import tiny

ct = pytest.importorskip("coremltools")

SEQ = 16
TINY = {"dim": 32, "depth": 1, "num_heads": 2, "seq_len": SEQ, "nibble_dim": 8, "acc_dim": 4, "warmup_steps": 1}


def byte_lm(**kwargs) -> ByteLM:
    """A tiny ByteLM whose weights are all non-zero (zero-initialised FiLM projections stay fp16)."""
    torch.manual_seed(0)
    model = tiny.byte_lm(**{**TINY, **kwargs}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real Lightning checkpoint of a tiny ByteLM (one training step on a tiny file)."""
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι 人人生而自由\n" * 60)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    model = tiny.byte_lm(**{**TINY, "embed_conditioner": {"name": "film", "zero_init": False}})
    trainer.fit(model, ByteDataModule([str(text)], seq_len=SEQ, batch_size=4, split_blocks=10))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    return path


# -- the package and its report ---------------------------------------------------------------------------
def test_int4_film_export_compresses_every_role_including_small_film_projections(tmp_path: Path) -> None:
    model = byte_lm()
    film = model.net.embed.conditioner.scale[0].weight
    assert film.numel() < 2048  # coremltools' default weight_threshold would skip it
    report = export_coreml(model, tmp_path / "out" / "byte.mlpackage", weights="int4_film", group_size=4)
    package = tmp_path / "out" / "byte.mlpackage"
    assert (package / "Manifest.json").is_file() and report_path(package) == tmp_path / "out" / "byte.json"
    assert json.loads(report_path(package).read_text()) == json.loads(json.dumps(report))
    assert report["inputs"] == [
        {"name": n, "shape": [1, SEQ], "dtype": "INT32"} for n in ("byte_ids", "nibble_ids", "acc_ids")
    ]
    assert report["outputs"] == [{"name": "logits", "shape": [1, SEQ, 256], "dtype": "FLOAT16"}]
    assert (report["compute_units"], report["compute_precision"], report["deployment_target"]) == (
        "CPU_AND_NE",
        "fp16",
        "iOS18",
    )
    assert {"linear", "gather", "scaled_dot_product_attention", "constexpr_blockwise_shift_scale"} <= set(
        report["op_histogram"]
    )
    assert report["export_check_max_abs_diff"] < 1e-4
    by_param = {w["param"]: w for w in report["weights"] if "param" in w}
    expected_roles = {
        n + ".weight": r
        for n, r in __import__("lightning_film.quantization", fromlist=["x"]).assign_roles(model.net).items()
    }
    assert set(by_param) == {"net." + k for k in expected_roles}  # every Linear / Embedding weight compressed
    for param, w in by_param.items():
        assert w["storage"] == ("int4" if w["role"] == "conditioner" else "int8"), param
    assert by_param["net.embed.conditioner.scale.0.weight"]["role"] == "conditioner"
    assert report["size_bytes"]["total"] > report["size_bytes"]["weights"] > 0
    assert any("subnormal in fp16" in w for w in report["warnings"])  # rmsnorm's 1e-6 eps
    assert not leftovers(tmp_path / "out")


def test_compression_formats_and_sizes(tmp_path: Path) -> None:
    model = byte_lm()
    sizes, storage = {}, {}
    for weights in ("fp16", "int8", "palettize4"):
        report = export_coreml(model, tmp_path / f"{weights}.mlpackage", weights=weights)
        sizes[weights], storage[weights] = report["size_bytes"]["weights"], report["weight_storage"]
    assert set(storage["fp16"]) == {"float16"}
    assert (
        storage["int8"]["int8"] == 10 and storage["palettize4"]["palettized4"] == 10
    )  # 3 embeddings, 2 FiLM, 4 block linears, head
    assert sizes["fp16"] > 1.7 * sizes["int8"] and sizes["int8"] > 1.5 * sizes["palettize4"]


def test_a_torchao_quantized_model_exports_its_own_int_weights(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    from lightning_film.quantization import Scheme, quantize

    model = byte_lm()
    quantize(model, Scheme.parse("int4_film", group_size=4))
    report = export_coreml(model, tmp_path / "tao.mlpackage")
    assert report["compression"]["torchao_quantized"] is True
    assert report["weight_storage"].get("int4", 0) >= 2 and report["weight_storage"].get("int8", 0) >= 7
    with pytest.raises(ExportError, match="already quantized by torchao"):
        export_coreml(model, tmp_path / "again.mlpackage", weights="int8")


@pytest.mark.skipif(
    sys.platform != "darwin", reason="Core ML predict needs macOS; on Linux the package is only read back"
)
def test_core_ml_numerics_match_pytorch(tmp_path: Path) -> None:
    model = byte_lm()
    export_coreml(model, tmp_path / "m.mlpackage")
    step = inference_step(model)
    example = step.example()
    mlmodel = ct.models.MLModel(str(tmp_path / "m.mlpackage"))
    got = mlmodel.predict({s.name: x.numpy() for s, x in zip(step.inputs, example)})["logits"]
    with torch.no_grad():
        expected = step.module(*example).numpy()
    assert abs(got - expected).max() < 0.05  # fp16 compute


def test_world_model_exports_one_denoiser_call(tmp_path: Path) -> None:
    from lightning_film.models import WorldDenoiser, WorldModel

    torch.manual_seed(0)
    net = WorldDenoiser(frame_size=16, context_frames=2, num_actions=4, patch_size=4, dim=32, depth=1, num_heads=2)
    world = WorldModel(net, kid_feature="tiny").eval()
    with torch.no_grad():
        for p in world.parameters():
            p.normal_(0, 0.1)
    report = export_coreml(world, tmp_path / "world.mlpackage", weights="int4_film", group_size=16)
    assert [(i["name"], i["shape"], i["dtype"]) for i in report["inputs"]] == [
        ("x_t", [1, 3, 16, 16], "FLOAT32"),
        ("t", [1], "FLOAT32"),
        ("context", [1, 2, 3, 16, 16], "FLOAT32"),
        ("action", [1], "INT32"),
    ]
    assert report["outputs"] == [{"name": "prediction", "shape": [1, 3, 16, 16], "dtype": "FLOAT16"}]
    assert {"pixel_unshuffle", "pixel_shuffle", "scaled_dot_product_attention"} <= set(report["op_histogram"])
    storage = {w["param"]: w["storage"] for w in report["weights"] if "param" in w}
    assert storage["net.transformer.blocks.0.cond1.scale.0.weight"] == "int4"
    assert storage["net.patch_embed.weight"] == storage["net.action_embed.weight"] == "int8"
    assert any("timestep embedding" in w for w in report["warnings"])
    assert report["export_check_max_abs_diff"] < 1e-4


# -- the command -------------------------------------------------------------------------------------------
@pytest.fixture
def export_cli(monkeypatch):
    monkeypatch.setitem(
        cli.EXTRA_COMMANDS, "export", ("Export a checkpoint.", "lightning_film.export.cli:export_command")
    )

    def run(*args: str) -> None:
        cli.main(["export", *args])

    return run


def test_cli_exports_a_checkpoint_without_touching_it(checkpoint: Path, export_cli, capsys) -> None:
    before = digest(checkpoint)
    export_cli(
        "--ckpt",
        str(checkpoint),
        "--to",
        "coreml",
        "--weights",
        "int8",
        "--roles",
        "conditioner=int4",
        "--group-size",
        "8",
        "--seq-len",
        "8",
        "--model",
        "lightning_film.models.ByteLM",
    )
    package = checkpoint.parent.parent / "export" / "last-int4_film.mlpackage"
    report = json.loads(report_path(package).read_text())
    assert report["inputs"][0]["shape"] == [1, 8] and report["source"] == str(checkpoint)
    assert report["compression"]["roles"]["conditioner"] == "int4"
    assert "int4" in report["weight_storage"]
    out = capsys.readouterr().out
    assert f"wrote {package}" in out and "inputs: byte_ids (1, 8)" in out
    assert digest(checkpoint) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ckpt", "missing.ckpt", "--to", "coreml"], "checkpoint 'missing.ckpt' does not exist"),
        (["--to", "onnx"], "unknown format --to 'onnx'; accepted: coreml"),
        (
            ["--to", "coreml", "--weights", "int3"],
            "unknown coreml weight scheme 'int3'; accepted presets: fp16, int8, int4, int4_film, palettize4",
        ),
        (
            ["--to", "coreml", "--roles", "film=int4"],
            "unknown role 'film'; accepted roles: conditioner, backbone, embedding, head",
        ),
        (["--to", "coreml", "--weights", "int4", "--target", "iOS17"], "int4 weights .* need deployment target iOS18"),
        (["--to", "coreml", "--target", "iOS99"], "unknown deployment target 'iOS99'; accepted: iOS13"),
        (["--to", "coreml", "--out", "{blocker}/m.mlpackage"], "cannot write to the output folder"),
        (["--to", "coreml", "--out", "m.onnx"], "must be a .mlpackage path"),
        (["--to", "coreml", "--seq-len", "99"], "seq_len must be an integer >= 1 and <= 16"),
        (["--to", "coreml", "--batch-size", "0"], "batch_size must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line(checkpoint: Path, export_cli, capsys, args: list[str], message: str) -> None:
    blocker = checkpoint.parent / "a_file"
    blocker.write_text("not a folder")
    args = [a.replace("{blocker}", str(blocker)) for a in args]
    if "--ckpt" not in args:
        args = ["--ckpt", str(checkpoint), "--model", "lightning_film.models.ByteLM", *args]
    before = digest(checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        export_cli(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-film: error:") and len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert digest(checkpoint) == before


def test_missing_coremltools_names_the_extra(checkpoint: Path, export_cli, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(SystemExit):
        export_cli("--ckpt", str(checkpoint), "--to", "coreml", "--model", "lightning_film.models.ByteLM")
    assert "pip install 'lightning_film[coreml]'" in capsys.readouterr().err


def test_a_failing_export_leaves_the_checkpoint_and_no_partial_file(checkpoint: Path, monkeypatch) -> None:
    out = checkpoint.parent.parent / "export" / "m.mlpackage"
    export_coreml(ByteLM.load_from_checkpoint(checkpoint), out)  # an earlier export at the same place
    earlier = (digest(report_path(out)), sorted(p.name for p in out.rglob("*")))
    before = digest(checkpoint)

    def fail(path):  # the package is written (to its temporary name) when this breaks
        assert (Path(path) / "Manifest.json").is_file()
        raise RuntimeError("simulated failure while reading the package back")

    monkeypatch.setattr(coreml_module, "read_package", fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        coreml_module.export_checkpoint(
            checkpoint, out, "lightning_film.models.ByteLM", weights="int4_film", group_size=8
        )
    assert digest(checkpoint) == before
    assert (digest(report_path(out)), sorted(p.name for p in out.rglob("*"))) == earlier  # the old export intact
    assert not leftovers(checkpoint.parent.parent)


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.bessel = _Bessel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bessel(self.proj(x))

    def coreml_step(self, batch_size: int, seq_len: int | None) -> InferenceStep:
        return InferenceStep(self, [TensorSpec("x", (batch_size, 4), torch.float32)], "y")


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)


def test_an_op_the_converter_rejects_is_named_with_its_module(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot convert op 'special_i0' \(from module bessel \(_Bessel\)\)"):
        export_coreml(_Odd(), tmp_path / "odd.mlpackage")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ExportError, match="no Core ML inference step for Linear; supported: ByteLM, WorldModel"):
        inference_step(nn.Linear(2, 2))


def test_export_steps_call_the_models_own_networks() -> None:
    """The default step is one call of ``model.net`` (shared, not copied); steps are found with
    isinstance, so a subclass exports in both layouts; export names no model by a class-path string."""
    import ast

    from lightning_film.export import ane_layout, steps, to_ane_layout

    class Subclassed(ByteLM):
        pass

    torch.manual_seed(0)
    net, rest = tiny.byte_lm(**TINY, block_conditioner="film").net, {"warmup_steps": TINY["warmup_steps"]}
    model = Subclassed(net, **rest).eval()
    step = inference_step(model, batch_size=2)
    assert step.module.net is model.net and [s.name for s in step.inputs] == ["byte_ids", "nibble_ids", "acc_ids"]
    ids = step.example()
    with torch.no_grad():
        expected = model(*(i.long() for i in ids))  # (B, N, V)
        torch.testing.assert_close(step.module(*ids), expected, rtol=0, atol=0)
        torch.testing.assert_close(to_ane_layout(model, min_eps=None)(*ids), expected, rtol=1e-4, atol=1e-5)
    for module in (steps, ane_layout):
        tree = ast.parse(Path(module.__file__).read_text())
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [s for s in strings if s.startswith("lightning_film.models")], module.__name__


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return y[y > 0]  # as many values as are positive: a shape that depends on the data

    def coreml_step(self, batch_size: int, seq_len: int | None) -> InferenceStep:
        return InferenceStep(self, [TensorSpec("x", (batch_size, 4), torch.float32)], "y")


def test_a_data_dependent_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"has a data-dependent shape \(u\d+,\); the Neural Engine runs fixed shapes only"
    ):
        export_coreml(_Masked(), tmp_path / "masked.mlpackage")
    assert not list(tmp_path.iterdir())


# -- the callback ------------------------------------------------------------------------------------------
def test_callback_exports_at_fit_end_float_and_torchao_quantized(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 60)
    callbacks = [
        ANEExportCallback(weights="int4_film", group_size=8, filename="float"),
        ANEExportCallback(from_quantization="int8", filename="tao"),  # before its QuantizationCallback: still works
        QuantizationCallback("ptq", "int8", evaluate=False),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    model = tiny.byte_lm(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, ByteDataModule([str(text)], seq_len=SEQ, batch_size=4, split_blocks=10))
    assert json.loads((tmp_path / "export" / "float.json").read_text())["compression"]["label"] == "int4_film"
    assert (
        callbacks[1].report["compression"]["torchao_quantized"] and callbacks[1].report["weight_storage"]["int8"] >= 9
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) is False  # it trained...
    assert all(type(v) is torch.Tensor for v in after.values())  # ...and stayed a float model
    with pytest.raises(
        ValueError,
        match="from_quantization='int4' names no QuantizationCallback of this trainer; their labels: \\['int8'\\]",
    ):
        L.Trainer(
            callbacks=[ANEExportCallback(from_quantization="int4"), QuantizationCallback()],
            logger=False,
            max_steps=1,
            enable_progress_bar=False,
        ).fit(tiny.byte_lm(**TINY), ByteDataModule([str(text)], seq_len=SEQ, batch_size=4, split_blocks=10))
