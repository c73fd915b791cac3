"""Evaluation stages: shared FID references, scoring several forget classes at once, and reuse of the
samples an unlearning job draws. Each batched path is checked against the one-at-a-time computation, and a
record and a reference against numpy."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metrics.fid import load_statistics
from unlearnbench import stages
from unlearnbench.checkpoints import folder_digest, load_tensors, save_unet
from unlearnbench.errors import UserError
from unlearnbench.networks import build_unet


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Digits, a briefly trained evaluator and an untrained tiny UNet, with the test config."""
    from unlearnbench.config import load_config

    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "config" / "test.yaml", methods_dir=root / "methods")
    config["evaluator"] = {**config["evaluator"], "epochs": 1}
    config["evaluation"] = {**config["evaluation"], "n_forget": 6, "n_per_remaining_class": 4}
    config["sampler"] = {**config["sampler"], "steps": 3}
    tmp = tmp_path_factory.mktemp("evaluation")
    stages.prepare_data(config, tmp / "data.npz")
    stages.train_evaluator(config, tmp / "data.npz", tmp / "evaluator")
    torch.manual_seed(0)
    save_unet(build_unet("tiny", 10), tmp / "unet")
    return config, tmp


@pytest.mark.parametrize("n_real_per_class", [None, 7])
def test_references_of_many_classes_equal_those_made_one_by_one(assets, tmp_path, n_real_per_class):
    config, tmp = assets
    config = copy.deepcopy(config)
    config["evaluation"]["n_real_per_class"] = n_real_per_class
    classes = [0, 3, 9]
    stages.write_fid_references(
        config, tmp / "data.npz", tmp / "evaluator", {c: tmp_path / f"many{c}.npz" for c in classes}
    )
    for c in classes:
        stages.write_fid_references(config, tmp / "data.npz", tmp / "evaluator", {c: tmp_path / f"one{c}.npz"})
        many, one = load_statistics(tmp_path / f"many{c}.npz"), load_statistics(tmp_path / f"one{c}.npz")
        with np.load(tmp / "data.npz") as data:
            all_remaining = int((data["train_y"] != c).sum())  # None: every train image of the other classes
        assert many["meta"]["n"] == one["meta"]["n"] == (9 * n_real_per_class if n_real_per_class else all_remaining)
        np.testing.assert_allclose(many["mu"], one["mu"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(many["sigma"], one["sigma"], rtol=1e-5, atol=1e-6)
    first, last = load_statistics(tmp_path / "many0.npz"), load_statistics(tmp_path / "many9.npz")
    assert not np.allclose(first["mu"], last["mu"])  # each class leaves out different images
    if n_real_per_class is None:  # every train image of the other classes: the statistics recomputed with numpy
        with np.load(tmp / "data.npz") as data, torch.no_grad():
            x = torch.as_tensor(data["train_x"][data["train_y"] != 9]).float() / 127.5 - 1
            features = stages.load_evaluator(tmp / "evaluator", "cpu").features(x).double().numpy()
        np.testing.assert_allclose(last["mu"], features.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last["sigma"], np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)


def test_the_cli_needs_one_output_per_forget_class(assets, tmp_path):
    from unlearnbench.cli import build_parser, run
    from unlearnbench.config import write_resolved

    config, tmp = assets
    write_resolved(config, tmp_path / "config.yaml")
    args = build_parser().parse_args(
        [
            "fid-reference",
            "--config",
            str(tmp_path / "config.yaml"),
            "--data",
            str(tmp / "data.npz"),
            "--evaluator",
            str(tmp / "evaluator"),
            "--forget-class",
            "0",
            "1",
            "--out",
            str(tmp_path / "a.npz"),
        ]
    )
    with pytest.raises(UserError, match="2 --forget-class values but 1 --out"):
        run(args)


def test_an_evaluator_unlike_its_record_says_to_remake_it(assets, tmp_path):
    """Weights of another evaluator under an evaluator.json: a message that says what to do, not a state-dict
    traceback."""
    import shutil

    _, tmp = assets
    shutil.copytree(tmp / "evaluator", tmp_path / "evaluator")
    record = json.loads((tmp_path / "evaluator" / "evaluator.json").read_text())
    (tmp_path / "evaluator" / "evaluator.json").write_text(json.dumps({**record, "num_classes": 5}))
    with pytest.raises(UserError, match="(?s)does not match its evaluator.json .* delete the folder and rerun"):
        stages.load_evaluator(tmp_path / "evaluator", "cpu")
    model = stages.load_evaluator(tmp / "evaluator", "cpu")  # the folder it came from still loads, with its weights
    saved = load_tensors(stages.evaluator_path(tmp / "evaluator"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_the_cli_refuses_a_prior_without_its_path():
    from unlearnbench.cli import _pairs

    assert _pairs(["fisher=a/b", "generated=c"]) == {"fisher": "a/b", "generated": "c"}
    for bad in ("fisher", "fisher=", "=a/b"):
        with pytest.raises(UserError, match="expected name=path"):
            _pairs([bad])


def test_scoring_many_classes_at_once_equals_scoring_each(assets, tmp_path):
    config, tmp = assets
    classes = [0, 4, 7]
    refs = {c: tmp_path / f"ref{c}.npz" for c in classes}
    stages.write_fid_references(config, tmp / "data.npz", tmp / "evaluator", refs)
    stages.generate_samples(config, tmp / "unet", tmp_path / "orig.npz", 0, None, 10)
    together = stages.score_classes(
        config,
        tmp_path / "orig.npz",
        tmp / "evaluator",
        refs,
        0,
        "original",
        "original",
        out_paths={c: tmp_path / f"rec{c}.json" for c in classes},
    )
    for c, rec in zip(classes, together):
        alone = stages.score(config, tmp_path / "orig.npz", tmp / "evaluator", refs[c], c, 0, "original", "original")
        assert rec["forget_class"] == c and (tmp_path / f"rec{c}.json").exists()
        for key in ("fid", "kid", "H", "UA", "forget_prob", "remaining_acc"):
            assert rec[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key
        assert rec["provenance"]["n_forget_samples"] == 6 and rec["provenance"]["n_fid_gen"] == 9 * 4


def test_a_record_scores_the_right_slices_of_its_samples(assets, tmp_path):
    """Each metric recomputed from the saved samples with numpy: H, UA and forget_prob over the first n_forget
    images of the forgotten class, remaining_acc and FID over the first n_per_remaining_class of each other class,
    FID against the reference's statistics through the eigenvalues of sigma_gen sigma_ref."""
    config, tmp = assets
    c = 4
    stages.write_fid_references(config, tmp / "data.npz", tmp / "evaluator", {c: tmp_path / "ref.npz"})
    stages.generate_samples(config, tmp / "unet", tmp_path / "samples.npz", 0, None, 10)
    record = stages.score(
        config, tmp_path / "samples.npz", tmp / "evaluator", tmp_path / "ref.npz", c, 0, "original", "original"
    )

    with np.load(tmp_path / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    evaluator = stages.load_evaluator(tmp / "evaluator", "cpu")
    with torch.no_grad():
        x = torch.as_tensor(images).float() / 127.5 - 1
        probs = torch.softmax(evaluator(x).double(), 1).numpy()
        features = evaluator.features(x).double().numpy()
    forget = np.flatnonzero(labels == c)[:6]
    remain = np.concatenate([np.flatnonzero(labels == k)[:4] for k in range(10) if k != c])
    p = probs[forget]
    assert record["H"] == pytest.approx(-np.sum(p * np.log(np.where(p > 0, p, 1)), axis=1).mean(), rel=1e-5)
    assert record["UA"] == pytest.approx(100 * np.mean(p.argmax(1) != c))
    assert record["forget_prob"] == pytest.approx(p[:, c].mean(), rel=1e-5)
    assert record["remaining_acc"] == pytest.approx(100 * np.mean(probs[remain].argmax(1) == labels[remain]))
    ref = load_statistics(tmp_path / "ref.npz")
    mu, sigma = features[remain].mean(0), np.cov(features[remain], rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(sigma @ ref["sigma"]).real, 0, None)).sum()
    fid = np.sum((mu - ref["mu"]) ** 2) + np.trace(sigma) + np.trace(ref["sigma"]) - 2 * tr_sqrt
    assert record["fid"] == pytest.approx(fid, rel=1e-4)
    assert record["provenance"]["n_fid_gen"] == len(remain) == 36


def test_evaluation_reuses_matching_presamples_and_redraws_otherwise(assets, tmp_path):
    config, tmp = assets
    ref = tmp_path / "ref2.npz"
    stages.write_fid_references(config, tmp / "data.npz", tmp / "evaluator", {2: ref})
    pre = tmp_path / "pre.npz"
    stages.generate_samples(config, tmp / "unet", pre, 0, 2, 10)  # what `unlearn --presample` draws

    def evaluate(cfg, name, model=tmp / "unet"):
        stages.evaluate_model(
            cfg,
            model,
            tmp / "data.npz",
            tmp_path / f"{name}.npz",
            tmp / "evaluator",
            ref,
            2,
            0,
            "m",
            "m",
            out_path=tmp_path / f"{name}.json",
            presampled=pre,
        )
        return stages.load_samples(tmp_path / f"{name}.npz")

    reused, _, meta = evaluate(config, "reused")
    assert np.array_equal(reused, stages.load_samples(pre)[0])
    stages.generate_samples(config, tmp / "unet", tmp_path / "fresh.npz", 0, 2, 10)
    assert np.array_equal(reused, stages.load_samples(tmp_path / "fresh.npz")[0])  # reuse changes nothing
    assert meta["model_digest"] == folder_digest(tmp / "unet")
    images, labels, pre_meta = stages.load_samples(pre)
    stages.save_samples(pre, 255 - images, labels, pre_meta)  # marked: proves they are copied, not redrawn
    assert np.array_equal(evaluate(config, "marked")[0], 255 - images)
    stages.save_samples(pre, images, labels, pre_meta)

    more = copy.deepcopy(config)
    more["evaluation"]["n_forget"] = 9
    images, labels, _ = evaluate(more, "more")
    assert (labels == 2).sum() == 9  # new counts: drawn again, not the 6 presampled

    torch.manual_seed(1)
    save_unet(build_unet("tiny", 10), tmp_path / "other_unet")  # other weights, same everything else
    assert not stages.presampled_matches(config, pre, tmp_path / "other_unet", 0, 2, 10)
    images, _, _ = evaluate(config, "other", model=tmp_path / "other_unet")
    assert not np.array_equal(images, reused)
    np.savez(pre, images=images, labels=labels)  # an older format, without meta: drawn again, no error
    assert not stages.presampled_matches(config, pre, tmp / "unet", 0, 2, 10)


def test_samples_and_records_name_the_sampler_alike(root):
    """The paper's 1000 steps with eta = 1 is DDPM's ancestral sampler; fewer steps (the digits config) is DDIM."""
    from unlearnbench.config import load_config

    paper = load_config(root / "config" / "paper.yaml", methods_dir=root / "methods")
    digits = load_config(methods_dir=root / "methods")
    assert stages.sampler_name(paper) == "ancestral" and stages.sampler_name(digits) == "ddim"
    assert stages.sampler_name({**paper, "sampler": {**paper["sampler"], "eta": 0.0}}) == "ddim"


def test_a_score_of_mismatched_files_is_refused(assets, tmp_path):
    """By hand, `score --forget-class 3 --reference class0.npz` on a class-0 model's samples wrote a record
    claiming class 3; the wrong file kinds gave bare KeyErrors."""
    config, tmp = assets
    refs = {c: tmp_path / f"ref{c}.npz" for c in (0, 3)}
    stages.write_fid_references(config, tmp / "data.npz", tmp / "evaluator", refs)
    stages.generate_samples(config, tmp / "unet", tmp_path / "forgot0.npz", 0, 0, 10)
    record = stages.score(config, tmp_path / "forgot0.npz", tmp / "evaluator", refs[0], 0, 0, "sa", "sa")
    assert record["forget_class"] == 0
    with pytest.raises(
        UserError,
        match=r"scoring forgotten class 3: .*ref0.npz leaves out class 0; the samples "
        r".*forgot0.npz are of a model that forgot class 0",
    ):
        stages.score(config, tmp_path / "forgot0.npz", tmp / "evaluator", refs[0], 3, 0, "sa", "sa")
    with pytest.raises(UserError, match="ref0.npz has classifier features, the config inception"):
        stages._check_pairing(refs[0], load_statistics(refs[0])["meta"], "s", {}, 0, "inception")
    with pytest.raises(UserError, match="data.npz is not a samples file"):
        stages.load_samples(tmp / "data.npz")
    with pytest.raises(UserError, match="forgot0.npz holds no FID statistics"):
        load_statistics(tmp_path / "forgot0.npz")
