"""Evaluation metrics beyond torchmetrics' own: bits per byte per source, KID feature extractors and
cached real features."""

from lightning_film.metrics.bits_per_byte import BitsPerByte, source_log_names
from lightning_film.metrics.kid import (
    KID_FEATURES,
    FeatureExtractor,
    InceptionFeatures,
    TinyFeatures,
    build_kid_feature,
    cache_root,
    compute_kid,
    inception_weights_path,
    kid_metric,
    list_kid_features,
    real_features,
)

__all__ = [
    "BitsPerByte",
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
    "source_log_names",
]
