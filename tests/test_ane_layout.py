"""The Neural Engine layout (``layout: ane``): a channels-first (B, C, 1, S) copy of each model's inference
step, linears as 1x1 convolutions, attention per head, norms over the channel axis, fp16-safe eps and mask.

The proof is in PyTorch, since Core ML cannot run on Linux: for every registered normalizer x conditioner
pair (each supported, or refused with a message naming the supported ones), for every ByteLM variant and
for the WorldModel, the copy's output equals the original step's in float32 within ``TOL`` (max abs diff,
relative beyond outputs of 1), with every weight moved off its initialisation and the conditioners' far
enough that each changes the output by O(1), so a wrong modulation could not pass. Conversion to Core ML is checked by reading the package back
(convolutions, no linear); its numerics only on macOS.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_film import cli
from lightning_film.callbacks import ANEExportCallback
from lightning_film.export import ExportError, ane_inference_step, export_coreml, inference_step, to_ane_layout
from lightning_film.export import coreml as coreml_module
from lightning_film.export.ane_layout import FP16_SAFE_EPS, MASK_VALUE
from lightning_film.models import ByteLM, WorldModel
from lightning_film.nn import FiLM, ablate_conditioning
from lightning_film.nn.channels_first import Affine, ChannelLayerNorm, ChannelRMSNorm, one_plus
from lightning_film.nn.conditioners import Conditioner
from lightning_film.nn.embedding import modulating_conditioners
from lightning_film.nn.norms import LayerNorm, RMSNorm
from lightning_film.registry import CONDITIONERS, NORMALIZERS
from tests.helpers import tiny

#: max |copy - original| / max(1, max |original|), float32: 1e-5 absolute for outputs of O(1), relative beyond
TOL = 1e-5
#: a conditioner must change the output by at least this much, or the grid could not catch a wrong one
SENSITIVE = 1e-2
SEQ = 16
BYTE = {"dim": 32, "depth": 2, "num_heads": 2, "seq_len": SEQ, "nibble_dim": 8, "acc_dim": 4}
WORLD = {
    "frame_size": 8,
    "context_frames": 1,
    "num_actions": 3,
    "patch_size": 2,
    "dim": 32,
    "depth": 2,
    "num_heads": 2,
    "kid_feature": "tiny",
}


def perturbed(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every weight moved off its init (N(0, 0.1)), conditioners' by N(0, 0.5)."""
    g = torch.Generator().manual_seed(1)
    conditioning = {id(p) for m in model.modules() if isinstance(m, Conditioner) for p in m.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if id(p) in conditioning else 0.1))
    return model.eval()


def byte_lm(**kwargs) -> ByteLM:
    torch.manual_seed(0)
    return perturbed(tiny.byte_lm(**{**BYTE, **kwargs}))


def world_model(**kwargs) -> WorldModel:
    torch.manual_seed(0)
    return perturbed(tiny.world_model(**{**WORLD, **kwargs}))


def max_diff(
    model: nn.Module,
    min_eps: float | None = None,
    batch_size: int = 2,
    seq_len: int | None = None,
    reference: nn.Module | None = None,
) -> float:
    """max |copy - original| / max(1, max |original|) of the inference step on example inputs (``reference``: the
    original to compare to)."""
    step = inference_step(reference or model, batch_size, seq_len)
    example = step.example(seed=3)
    with torch.no_grad():
        expected = step.module(*example)
        got = to_ane_layout(model, min_eps)(*example)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1.0))


def sensitivity(model: nn.Module) -> float:
    """How much the conditioning changes the output: max |original - original with conditioners ablated|."""
    step = inference_step(model, 2)
    example = step.example(seed=3)
    with torch.no_grad():
        full = step.module(*example)
        with ablate_conditioning(model):
            ablated = step.module(*example)
    return float((full - ablated).abs().max())


# -- equivalence: every normalizer x conditioner ----------------------------------------------------------------
@pytest.mark.parametrize("normalizer", NORMALIZERS.names())
@pytest.mark.parametrize("conditioner", [*modulating_conditioners(), "none"])
def test_byte_lm_equals_its_ane_layout(normalizer: str, conditioner: str) -> None:
    embed = "film" if conditioner == "none" else conditioner
    model = byte_lm(normalizer=normalizer, embed_conditioner=embed, block_conditioner=conditioner)
    assert max_diff(model) < TOL
    assert sensitivity(model) > SENSITIVE


@pytest.mark.parametrize("normalizer", NORMALIZERS.names())
@pytest.mark.parametrize("conditioner", CONDITIONERS.names())
def test_world_model_equals_its_ane_layout(normalizer: str, conditioner: str) -> None:
    model = world_model(normalizer=normalizer, conditioner=conditioner)  # every registered one has a form
    assert max_diff(model) < TOL
    if conditioner != "none":
        assert sensitivity(model) > SENSITIVE


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "byte"},
        {"variant": "nibble", "block_conditioner": "film_tanh"},
        {"variant": "nibble_acc", "combine": "sum", "acc_dim": 8, "block_conditioner": "adaln_zero"},
        {"tie_embeddings": True, "positions": "none", "normalizer": "layernorm"},
        {
            "embed_conditioner": {"name": "film", "hidden_dim": 6},
            "block_conditioner": {"name": "adaln", "hidden_dim": 5},
        },
        {"depth": 1, "num_heads": 4, "mlp_ratio": 2.0},
        {"positions": "rotary", "init": "neox"},
        {"positions": "rotary", "variant": "nibble_acc", "dim": 30, "num_heads": 2},
    ],
    ids=[
        "byte",
        "nibble",
        "nibble_acc_sum",
        "tied_no_positions",
        "mlp_projections",
        "four_heads",
        "rotary",
        "rotary_odd_head_dim",
    ],
)
def test_byte_lm_variants_equal_their_ane_layout(options: dict) -> None:
    model = byte_lm(**options)
    assert max_diff(model) < TOL
    assert max_diff(model, batch_size=1, seq_len=5) < TOL  # a window shorter than the context: mask and positions cut


@pytest.mark.parametrize(
    "options",
    [
        {"combine": "concat", "conditioner": "film_exp"},
        {"objective": "flow", "conditioner": "adaln_zero"},
        {"conditioner": {"name": "cross_attention", "num_heads": 4}, "normalizer": "layernorm"},
    ],
    ids=["concat_signals", "flow", "cross_attention_4_heads"],
)
def test_world_model_variants_equal_their_ane_layout(options: dict) -> None:
    assert max_diff(world_model(**options)) < TOL


def test_ablated_conditioners_stay_ablated_in_the_copy() -> None:
    model = byte_lm(block_conditioner="film")
    with ablate_conditioning(model):
        assert max_diff(model) < TOL


def test_a_wrong_modulation_would_fail_the_grid(monkeypatch) -> None:
    model = byte_lm(embed_conditioner="film_tanh", block_conditioner="film_tanh")
    wrong = lambda self, h, c: h * one_plus(self._part(c, 1)) + self._part(c, 0)  # noqa: E731
    monkeypatch.setattr(Affine, "modulate", wrong)  # 1 + s instead of FiLMTanh's 1 + bound * tanh(s)
    assert max_diff(model) > 100 * TOL


# -- fp16 safety: eps and mask ------------------------------------------------------------------------------
@pytest.mark.parametrize("normalizer", ["rmsnorm", "layernorm"])
def test_eps_below_fp16_normal_is_raised_and_is_the_only_change(normalizer: str) -> None:
    model = byte_lm(normalizer=normalizer)  # eps 1e-6: subnormal in fp16
    step = to_ane_layout(model)
    assert FP16_SAFE_EPS == 2.0**-14
    assert step.notes == [
        f"5 normalizer eps 1e-06 raised to {FP16_SAFE_EPS:g} (fp16's smallest normal; subnormals "
        f"may be flushed to zero on the Neural Engine)"
    ]
    assert {float(m.eps) for m in step.modules() if isinstance(m, ChannelRMSNorm)} == {  # layernorm: centred
        FP16_SAFE_EPS
    }
    raised = copy.deepcopy(model)
    for m in raised.modules():
        if isinstance(m, (LayerNorm, RMSNorm)):
            m.eps = FP16_SAFE_EPS
    assert max_diff(model, min_eps=FP16_SAFE_EPS, reference=raised) < TOL  # equal to the original with eps raised
    assert to_ane_layout(model, min_eps=None).notes == []
    assert model.net.transformer.final_norm.eps == 1e-6  # the model itself is untouched


def test_causal_mask_is_finite_and_additive() -> None:
    step = to_ane_layout(byte_lm())
    mask = step.net.transformer.mask  # (1, L, 1, L): [0, key, 0, query]
    assert mask.shape == (1, SEQ, 1, SEQ) and torch.isfinite(mask).all()
    assert mask[0, 3, 0, 2] == MASK_VALUE and mask[0, 2, 0, 3] == 0 and mask.min() == MASK_VALUE
    assert abs(MASK_VALUE) < 65504  # finite in fp16


def test_norms_survive_fp16_activations_that_overflow_the_plain_formula() -> None:
    x = torch.randn(2, 64, 1, 8, generator=torch.Generator().manual_seed(0)) * 400  # x^2 > 65504: inf in fp16
    weight, bias = torch.rand(64) + 0.5, torch.randn(64)
    for norm in (ChannelRMSNorm(FP16_SAFE_EPS, weight), ChannelLayerNorm(FP16_SAFE_EPS, weight, bias)):
        expected = norm(x)
        got = copy.deepcopy(norm).half()(x.half()).float()
        assert torch.isfinite(got).all() and (got - expected).abs().max() < 0.02
    assert torch.isfinite(ChannelRMSNorm(FP16_SAFE_EPS, None).half()(torch.zeros(1, 8, 1, 4).half())).all()


# -- a copy, not a view; what is refused ----------------------------------------------------------------------
def test_the_copy_shares_no_tensor_and_leaves_the_model_unchanged() -> None:
    model = byte_lm(block_conditioner="adaln_zero", tie_embeddings=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = to_ane_layout(model)
    assert not step.training and model.training is False
    theirs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not theirs & {t.untyped_storage().data_ptr() for t in [*step.parameters(), *step.buffers()]}
    with torch.no_grad():
        for p in step.parameters():
            p.zero_()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, nn.Linear) for m in step.modules())


class _Halved(FiLM):
    """A FiLM subclass with its own gamma: FiLM's channels-first form reads it, so it exports."""

    def gamma(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 + s


class _Squared(FiLM):
    """A FiLM subclass with its own modulate: FiLM's form would compute FiLM's, so it is refused."""

    def modulate(self, h: torch.Tensor, cond) -> torch.Tensor:
        return super().modulate(h, cond) ** 2


class _MeanNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)


def test_unsupported_parts_are_refused_by_name() -> None:
    model = byte_lm(block_conditioner="film")
    model.net.transformer.blocks[1].cond2 = perturbed(_Halved(32, model.net.embed.cond_dim, site="mlp"))
    assert max_diff(model) < TOL  # a subclass changing only gamma exports (it used to be refused)
    model.net.transformer.blocks[1].cond2 = _Squared(32, model.net.embed.cond_dim, site="mlp")
    with pytest.raises(
        ExportError,
        match=r"_Squared \(at transformer\.blocks\.1\.cond2\) overrides modulate but inherits "
        r"channels_first from FiLM, .*define _Squared\.channels_first\(self, cf\) -> nn\.Module.*layout 'default'",
    ):
        to_ane_layout(model)
    model = byte_lm()
    model.net.transformer.final_norm = _MeanNorm()
    with pytest.raises(
        ExportError,
        match=r"_MeanNorm \(at transformer\.final_norm\) has no channels-first form: define _MeanNorm\.channels_first",
    ):
        to_ane_layout(model)
    with pytest.raises(
        ExportError, match="layout 'ane' is built for ByteLM, WorldModel; Linear exports with layout 'default' only"
    ):
        to_ane_layout(nn.Linear(2, 2))
    with pytest.raises(ExportError, match=r"min_eps must be a number > 0 \(or None to keep every eps\), got -1"):
        to_ane_layout(byte_lm(), min_eps=-1)
    with pytest.raises(ExportError, match="unknown layout 'nchw'; accepted: default, ane"):
        export_coreml(byte_lm(), "never.mlpackage", layout="nchw")


def test_a_custom_conditioner_from_the_readme_exports_with_the_hook_and_is_refused_without() -> None:
    from examples.custom_conditioner import LowRankFiLM

    class NoHook(Conditioner):  # the README's conditioner, without channels_first
        def __init__(self, dim: int, cond_dim: int, site: str = "attn") -> None:
            super().__init__(dim, cond_dim, site)
            self.inner = LowRankFiLM(dim, cond_dim, site)

        def modulate(self, h: torch.Tensor, cond) -> torch.Tensor:
            return self.inner.modulate(h, cond)

    model = world_model(conditioner="examples.custom_conditioner:LowRankFiLM")
    assert max_diff(model) < TOL and sensitivity(model) > SENSITIVE
    model = world_model(conditioner={"name": "examples.custom_conditioner:LowRankFiLM", "rank": 2})
    assert max_diff(model) < TOL
    model.net.transformer.blocks[0].cond1 = NoHook(32, model.net.transformer.cond_dim)
    with pytest.raises(
        ExportError,
        match=r"^layout 'ane': NoHook \(at transformer\.blocks\.0\.cond1\) has no "
        r"channels-first form: define NoHook\.channels_first\(self, cf\) -> nn\.Module .*or export "
        r"with layout 'default'$",
    ):
        to_ane_layout(model)


def test_a_torchao_quantized_model_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    from lightning_film.quantization import Scheme, quantize

    model = byte_lm()
    quantize(model, Scheme.parse("int8"))
    with pytest.raises(ExportError, match="export the float model with layout 'ane' and weights int8 / int4"):
        export_coreml(model, tmp_path / "q.mlpackage", layout="ane")
    assert not list(tmp_path.iterdir())


# -- wiring: export, CLI, callback --------------------------------------------------------------------------
def test_export_command_converts_the_ane_layout_to_convolutions(tmp_path: Path, monkeypatch, capsys) -> None:
    ct = pytest.importorskip("coremltools")  # noqa: F841
    from lightning_film.data.bytes import ByteDataModule

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. Ὅλοι οἱ ἄνθρωποι\n" * 40)
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
    model = tiny.byte_lm(**{**BYTE, "depth": 1, "embed_conditioner": {"name": "film", "zero_init": False}})
    trainer.fit(model, ByteDataModule([str(text)], seq_len=SEQ, batch_size=4, split_blocks=10))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    trainer.save_checkpoint(ckpt)
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "export", ("Export.", "lightning_film.export.cli:export_command"))

    cli.main(
        [
            "export",
            "--ckpt",
            str(ckpt),
            "--to",
            "coreml",
            "--layout",
            "ane",
            "--weights",
            "int4_film",
            "--group-size",
            "4",
            "--model",
            "lightning_film.models.ByteLM",
        ]
    )
    package = tmp_path / "run" / "export" / "last-int4_film-ane.mlpackage"
    assert f"wrote {package}" in capsys.readouterr().out
    report = __import__("json").loads(package.with_suffix(".json").read_text())
    ops = report["op_histogram"]
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())  # 7: FiLM scale + shift, qkv, proj, fc1, fc2, head
    assert "linear" not in ops and ops["conv"] == linears + 2  # qkv became three convolutions
    assert ops["einsum"] == 2 * BYTE["num_heads"] and "scaled_dot_product_attention" not in ops
    assert report["layout"]["name"] == "ane" and "raised to" in report["layout"]["notes"][0]
    assert not any("linear layers on (B, S, C)" in w or "norm epsilon" in w for w in report["warnings"])
    assert report["inputs"] == [
        {"name": n, "shape": [1, SEQ], "dtype": "INT32"} for n in ("byte_ids", "nibble_ids", "acc_ids")
    ]
    assert report["outputs"] == [
        {"name": "logits", "shape": [1, SEQ, 256], "dtype": "FLOAT16"}
    ]  # as the default layout
    storage = {w["param"]: (w["role"], w["storage"]) for w in report["weights"] if "param" in w}
    assert storage["net.embed.conditioner.form.projections.0.0.weight"] == ("conditioner", "int4")
    assert storage["net.transformer.blocks.0.attn.q.weight"] == ("backbone", "int8")  # q keeps its own constant
    assert storage["net.head.form.weight"] == ("head", "int8") and storage["net.embed.byte.weight"] == (
        "embedding",
        "int8",
    )
    assert len(storage) == linears + 2 + 3  # every conv and embedding compressed


def test_layout_option_of_the_command_and_the_callback(monkeypatch, capsys) -> None:
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "export", ("Export.", "lightning_film.export.cli:export_command"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "--ckpt", "any.ckpt", "--to", "coreml", "--layout", "nhwc"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == "lightning-film: error: export: unknown --layout 'nhwc'; accepted: default, ane"
    )
    with pytest.raises(ValueError, match="ANEExportCallback: unknown layout 'nhwc'; accepted: 'default', 'ane'"):
        ANEExportCallback(layout="nhwc")
    with pytest.raises(ValueError, match="layout 'ane' rebuilds the float model's linears"):
        ANEExportCallback(layout="ane", from_quantization="int8")
    seen = {}
    monkeypatch.setattr(
        coreml_module,
        "export_coreml",
        lambda model, path, **kw: (
            seen.update(kw) or {"size_bytes": {"total": 1}, "op_count": 1, "weight_storage": {}, "warnings": []}
        ),
    )
    ANEExportCallback(layout="ane").export(byte_lm(), "m.mlpackage")
    assert seen["layout"] == "ane"


@pytest.mark.skipif(
    sys.platform != "darwin",
    reason="Core ML models run only on macOS: on Linux the ANE-layout "
    "package is converted and read back, and its equivalence is proven in PyTorch",
)
def test_core_ml_numerics_of_the_ane_layout_match_pytorch(tmp_path: Path) -> None:
    ct = pytest.importorskip("coremltools")
    model = byte_lm(block_conditioner="film_tanh")
    export_coreml(model, tmp_path / "ane.mlpackage", layout="ane")
    step = ane_inference_step(model)
    example = inference_step(model).example()
    mlmodel = ct.models.MLModel(str(tmp_path / "ane.mlpackage"), compute_units=ct.ComputeUnit.CPU_AND_NE)
    got = mlmodel.predict({s.name: x.numpy() for s, x in zip(step.inputs, example)})["logits"]
    with torch.no_grad():
        expected = inference_step(model).module(*example).numpy()
    assert abs(got - expected).max() < 0.05  # fp16 compute
