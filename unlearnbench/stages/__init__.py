"""The workflow's stages as importable functions, one module per part of the pipeline; `unlearnbench.cli` is a
thin argparse layer over them. foundation (data, original model, evaluator) -> unlearning (priors, methods) ->
sampling (samples and their files) -> scoring (FID references, metrics records) -> figures; beyond the paper:
robustness (extra evaluators, Retrain, forget-class distances) and attacks."""

from __future__ import annotations

from .attacks import attack_models, attack_settings
from .foundation import (
    device_generator,
    evaluator_path,
    load_evaluator,
    load_run_config,
    prepare_data,
    train_base,
    train_evaluator,
)
from .render import render_figures
from .robustness import evaluator_spec, score_robustness, train_extra_evaluator
from .sampling import (
    generate_samples,
    load_samples,
    presampled_matches,
    sample_counts,
    sample_meta,
    sampler_name,
    sampling_seed,
    save_grid,
    save_samples,
    with_guidance,
)
from .scoring import (
    _check_pairing,
    denoiser_norms,
    evaluate_at_weights,
    evaluate_model,
    fid_features,
    score,
    score_classes,
    summarize_original,
    versions,
    write_fid_references,
)
from .unlearning import (
    IMPORTED_COST_REASON,
    _context,
    check_original,
    check_priors,
    diverged_hint,
    import_model,
    method_code_digest,
    original_weights_in,
    parse_overrides,
    prior_files,
    run_prior,
    run_unlearning,
    unlearning_state_key,
)

__all__ = [
    "attack_models",
    "attack_settings",
    "evaluator_spec",
    "score_robustness",
    "train_extra_evaluator",
    "_check_pairing",
    "_context",
    "check_original",
    "check_priors",
    "denoiser_norms",
    "device_generator",
    "diverged_hint",
    "evaluate_at_weights",
    "evaluate_model",
    "evaluator_path",
    "fid_features",
    "generate_samples",
    "import_model",
    "IMPORTED_COST_REASON",
    "load_evaluator",
    "load_run_config",
    "load_samples",
    "method_code_digest",
    "original_weights_in",
    "parse_overrides",
    "prepare_data",
    "presampled_matches",
    "prior_files",
    "render_figures",
    "run_prior",
    "run_unlearning",
    "sample_counts",
    "sample_meta",
    "sampler_name",
    "sampling_seed",
    "save_grid",
    "save_samples",
    "score",
    "score_classes",
    "summarize_original",
    "train_base",
    "train_evaluator",
    "unlearning_state_key",
    "versions",
    "with_guidance",
    "write_fid_references",
]
