"""Evaluation metrics: forgetting (entropy H, unlearning accuracy UA) and FID/KID.

Plain functions over numpy arrays and torch models, so the evaluation code and the tests
call the same maths. FID/KID features come from the evaluation classifier or from
clean-fid's Inception network (``fid.backend`` in the config).
"""
from metrics.fid import (
    FID_BACKENDS,
    classifier_features,
    feature_extractor,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    kid_from_features,
    load_statistics,
    reference_statistics,
    save_statistics,
)
from metrics.forgetting import (
    accuracy,
    entropy,
    mean_class_probability,
    softmax_probabilities,
    unlearning_accuracy,
)

__all__ = [
    "FID_BACKENDS", "accuracy", "classifier_features", "entropy", "feature_extractor",
    "feature_statistics", "fid_from_features", "frechet_distance", "inception_features",
    "kid_from_features", "load_statistics", "mean_class_probability", "reference_statistics",
    "save_statistics", "softmax_probabilities", "unlearning_accuracy",
]
