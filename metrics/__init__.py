"""Evaluation metrics: forgetting (entropy H, unlearning accuracy UA), FID/KID and robustness.

Plain functions over numpy arrays and torch models, so the evaluation code and the tests
call the same maths. FID/KID features come from the evaluation classifier or from
clean-fid's Inception network (``fid.backend`` in the config). Robustness metrics: "no class" verdicts, evaluator
agreement, improved precision/recall and steps to recover under a relearning attack (``metrics.robustness``).
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
from metrics.robustness import (
    median_steps_to_recover,
    no_class_verdicts,
    precision_recall,
    steps_to_recover,
    ua_agreement,
)

__all__ = [
    "FID_BACKENDS",
    "accuracy",
    "classifier_features",
    "entropy",
    "feature_extractor",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_features",
    "kid_from_features",
    "load_statistics",
    "mean_class_probability",
    "median_steps_to_recover",
    "no_class_verdicts",
    "precision_recall",
    "reference_statistics",
    "save_statistics",
    "softmax_probabilities",
    "steps_to_recover",
    "ua_agreement",
    "unlearning_accuracy",
]
