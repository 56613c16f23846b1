"""Evaluation metrics beyond torchmetrics' own: KID feature extractors and cached real features."""

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
]
