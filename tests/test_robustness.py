"""Beyond the paper's evaluation: images of no class, the extra evaluators, Retrain, the partial-diffusion denoiser,
the forgotten class's scores and the attacks, each stage on the tiny config (the workflow: test_workflow.py)."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_original import adopted_original

from metrics.forgetting import softmax_probabilities, unlearning_accuracy
from unlearnbench import checkpoints as ckpt
from unlearnbench import stages
from unlearnbench.config import ConfigError, load_config
from unlearnbench.data import NO_CLASS_KINDS, ImageData, load_digits, no_class_images, to_float
from unlearnbench.diffusion import Schedule, denoise_from
from unlearnbench.errors import UserError
from unlearnbench.networks import build_classifier
from unlearnbench.stages.attacks import attack_settings, record_points
from unlearnbench.workflow import fingerprint, noise_aware_evaluator

ROOT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "test.yaml"


# ---------------------------------------------------------------- images of no class
def test_no_class_images_are_each_kind_as_described():
    data = load_digits()
    x, y = data.train_x[:200], data.train_y[:200]
    images, kinds = no_class_images(x, y, 52, seed=0)
    assert images.dtype == np.uint8 and images.shape == (52, *x.shape[1:])
    assert [kinds.count(k) for k in NO_CLASS_KINDS] == [11, 11, 10, 10, 10]  # the first kinds get the remainder
    kinds = np.array(kinds)
    real_sorted = {tuple(np.sort(img.ravel())) for img in x}
    for img in images[kinds == "shuffled"]:  # a real image's pixels, in another order
        assert tuple(np.sort(img.ravel())) in real_sorted
    uniform = images[kinds == "uniform"].astype(float)
    assert uniform.min() < 30 and uniform.max() > 225  # spread over the whole range, unlike any digit's background
    for img in images[kinds == "mixture"]:  # the mean of two real images of different classes, found by search
        pairs = [
            (i, j)
            for i in range(len(x))
            for j in range(len(x))
            if y[i] < y[j] and np.abs((x[i].astype(float) + x[j]) / 2 - img).max() <= 0.5 + 1e-9
        ]
        assert pairs, "a mixture is not the mean of two real images of two classes"
    again, _ = no_class_images(x, y, 52, seed=0)
    assert np.array_equal(images, again)
    with pytest.raises(ValueError, match="one of each kind"):
        no_class_images(x, y, 3, seed=0)


def test_the_noise_aware_evaluator_counts_noise_as_forgotten_where_the_main_one_calls_it_a_class(tmp_path):
    """The issue's case: the digits evaluator calls uniform noise one class (8), so a model that turns that class into
    noise scores UA ~0. The noise-aware evaluator says "no class" to such images and still recognises real ones."""
    config = load_config()  # the default evaluators, on digits
    stages.prepare_data(config, tmp_path / "data.npz")
    data = ImageData.load(tmp_path / "data.npz")
    main = stages.train_evaluator(config, tmp_path / "data.npz", tmp_path / "main")
    info = stages.train_extra_evaluator(config, "noise_aware", tmp_path / "data.npz", tmp_path / "noise_aware")
    assert info["num_classes"] == 11 and info["no_class"] == 10 and info["test_accuracy"] > 95
    assert min(info["no_class_test_recall"].values()) > 50
    noise = torch.rand(300, 1, 8, 8) * 2 - 1  # what a model that forgets into uniform noise generates
    evaluator = stages.load_evaluator(tmp_path / "main", "cpu")
    said = np.bincount(softmax_probabilities(evaluator, noise).argmax(1), minlength=10)
    noise_class = int(said.argmax())
    assert said[noise_class] > 150, f"the main evaluator no longer lumps noise into one class: {said}"
    probs_noise = softmax_probabilities(stages.load_evaluator(tmp_path / "noise_aware", "cpu"), noise)
    probs_real = softmax_probabilities(
        stages.load_evaluator(tmp_path / "noise_aware", "cpu"), to_float(data.test_x[data.test_y == noise_class])
    )
    # counted by hand from the argmax: "no class" and any other class are forgotten, the class itself is not
    ua_noise = 100 * np.mean(probs_noise.argmax(1) != noise_class)
    ua_real = 100 * np.mean(probs_real.argmax(1) != noise_class)
    assert unlearning_accuracy(softmax_probabilities(evaluator, noise), noise_class) < 50  # plain UA: not forgotten
    assert ua_noise > 95 and ua_real < 10
    assert main["num_classes"] == 10


def test_the_second_evaluator_is_another_architecture_trained_on_its_own(tmp_path, tiny_config):
    stages.prepare_data(tiny_config, tmp_path / "data.npz")
    info = stages.train_extra_evaluator(tiny_config, "second", tmp_path / "data.npz", tmp_path / "second")
    assert info["arch"] == "mlp" and info["num_classes"] == 10 and info["no_class"] is None
    assert info["seed"] == tiny_config["robustness"]["evaluators"]["second"]["seed"]
    for size in (8, 32):
        model = build_classifier("mlp", 3, 10)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)
    with pytest.raises(UserError, match="not one of robustness.evaluators"):
        stages.train_extra_evaluator(tiny_config, "third", tmp_path / "data.npz", tmp_path / "third")


# ---------------------------------------------------------------- Retrain
def test_retrain_is_the_base_recipe_without_the_forgotten_class(tmp_path, tiny_config):
    config = copy.deepcopy(tiny_config)
    config["base"]["steps"] = 4
    config["base"]["checkpoint_every"] = 2
    stages.prepare_data(config, tmp_path / "data.npz")
    data = ImageData.load(tmp_path / "data.npz")
    config["base"]["checkpoint"] = str(tmp_path / "never-read")  # Retrain trains: it never adopts a checkpoint
    record = stages.train_base(config, tmp_path / "data.npz", tmp_path / "retrain", without_class=3)
    assert record["without_class"] == 3 and record["steps"] == 4
    assert record["n_train"] == int((data.train_y != 3).sum())
    assert ckpt.load_unet(tmp_path / "retrain" / "unet_ema").config.num_class_embeds == 11  # labels keep their place
    with pytest.raises(UserError, match="classes 0..9"):
        stages.train_base(config, tmp_path / "data.npz", tmp_path / "retrain10", without_class=10)


# ---------------------------------------------------------------- the partial-diffusion denoiser
class ExactDenoiser(torch.nn.Module):
    """eps_theta of a data distribution that is one image c: eps = (x_t - sqrt(ab_t) c) / sqrt(1 - ab_t)."""

    def __init__(self, schedule, target):
        super().__init__()
        self.schedule, self.target = schedule, target
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"num_class_embeds": 11})()

    def forward(self, x, t, labels):
        ab = self.schedule.alpha_bar[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


@pytest.mark.parametrize("t_start,steps,eta", [(99, 2, 1.0), (499, 7, 0.0), (899, 13, 1.0), (0, 5, 1.0)])
def test_denoise_from_brings_any_noised_image_to_the_only_image_of_its_data(t_start, steps, eta):
    schedule = Schedule(1000, 1e-4, 0.02)
    target = torch.linspace(-0.8, 0.8, 64).view(1, 1, 8, 8)
    model = ExactDenoiser(schedule, target)
    g = torch.Generator().manual_seed(0)
    x_t = schedule.q_sample(
        torch.rand(5, 1, 8, 8) * 2 - 1, torch.full((5,), t_start), torch.randn(5, 1, 8, 8, generator=g)
    )
    out = denoise_from(
        model,
        schedule,
        x_t,
        t_start,
        torch.zeros(5, dtype=torch.long),
        steps=steps,
        eta=eta,
        guidance_w=2.0,
        generator=g,
        batch_size=2,
    )
    assert torch.allclose(out, target.expand(5, -1, -1, -1), atol=1e-3)  # float32: eps / sqrt(1 - ab) near t = 0
    with pytest.raises(ValueError, match="t_start"):
        denoise_from(
            model, schedule, x_t, 1000, torch.zeros(5, dtype=torch.long), steps=1, eta=1.0, guidance_w=0, generator=g
        )


# ---------------------------------------------------------------- scores and attacks on the tiny config
@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    config = load_config(ROOT_CONFIG)
    adopted_original(tmp, config)
    stages.train_evaluator(config, tmp / "data.npz", tmp / "evaluator")
    stages.train_extra_evaluator(config, "noise_aware", tmp / "data.npz", tmp / "noise_aware")
    stages.train_extra_evaluator(config, "second", tmp / "data.npz", tmp / "second")
    model = tmp / "original" / "unet_ema"
    out = {1: tmp / "attack1.json"}
    records = stages.attack_models(
        config, tmp / "data.npz", tmp / "evaluator", tmp / "noise_aware", {1: model}, 0, "somemethod", out
    )
    return tmp, config, records


def test_attack_budgets_scale_as_the_methods_step_counts():
    config = load_config(ROOT_CONFIG)
    assert attack_settings(config)["relearning"] == {"k": [2, 5], "steps": 2, "every": 1}  # 34 x 0.06 = 2
    paper = load_config("config/paper.yaml")
    assert attack_settings(paper)["relearning"]["steps"] == paper["robustness"]["attacks"]["relearning"]["steps"]
    assert record_points(60, 15) == [0, 15, 30, 45, 60] and record_points(10, 4) == [0, 4, 8, 10]


def test_each_attack_records_its_points_its_summary_and_its_cost(attacked):
    tmp, config, (record,) = attacked
    settings = attack_settings(config)
    by_attack = {}
    for p in record["points"]:
        by_attack.setdefault((p["attack"], p["value"]), []).append(p)
    for k in settings["relearning"]["k"]:
        assert [p["step"] for p in by_attack[("relearning", k)]] == [0, 1, 2]
    assert [p["step"] for p in by_attack[("resurgence", None)]] == [0, 1, 2]
    assert sorted(v for a, v in by_attack if a == "partial_diffusion") == [0.2, 0.8]
    for p in record["points"]:
        assert 0 <= p["ua"] <= 100 and 0 <= p["no_class_share"] <= p["ua_noise_aware"] <= 100
    # step 0 is the model before any attack: every fine-tuning attack starts from the same verdict
    starts = {(p["ua"], p["ua_noise_aware"]) for p in record["points"] if p["step"] == 0}
    assert len(starts) == 1
    curve = by_attack[("relearning", 2)]
    expected = next((p["step"] for p in curve if p["ua"] < 50), None)
    assert record["summary"]["relearn_steps_to_recover_k2"] == expected
    assert record["summary"]["resurgence_ua_final"] == by_attack[("resurgence", None)][-1]["ua"]
    assert set(record["cost"]) == {"relearning_k2", "relearning_k5", "resurgence", "partial_diffusion"}
    assert all(c["rte_s"] > 0 for c in record["cost"].values())
    assert record["settings"]["relearning"]["steps"] == 2 and record["settings"]["lr"] == config["base"]["lr"]
    assert ckpt.read_json(tmp / "attack1.json") == ckpt.read_json(tmp / "attack1.json")  # written, valid JSON


def test_an_attack_is_repeatable_and_leaves_the_attacked_model_as_it_was(attacked):
    tmp, config, (record,) = attacked
    model = tmp / "original" / "unet_ema"
    digest = ckpt.folder_digest(model)
    again = stages.attack_models(
        config,
        tmp / "data.npz",
        tmp / "evaluator",
        tmp / "noise_aware",
        {1: model},
        0,
        "somemethod",
        {1: tmp / "again.json"},
    )[0]
    assert again["points"] == record["points"]
    assert ckpt.folder_digest(model) == digest


def test_scores_of_the_forgotten_class_under_every_evaluator(attacked):
    tmp, config, _ = attacked
    samples = tmp / "samples.npz"
    stages.generate_samples(config, tmp / "original" / "unet_ema", samples, 0, None, 10)
    extra = {"noise_aware": tmp / "noise_aware", "second": tmp / "second"}
    records = stages.score_robustness(
        config,
        tmp / "data.npz",
        tmp / "evaluator",
        extra,
        {0: samples, 1: samples},
        0,
        "original",
        {0: tmp / "s0.json", 1: tmp / "s1.json"},
    )
    images, labels, _ = stages.load_samples(samples)
    data = ImageData.load(tmp / "data.npz")
    for record in records:
        c = record["forget_class"]
        x = to_float(images[labels == c][: config["evaluation"]["n_forget"]])
        na = softmax_probabilities(stages.load_evaluator(tmp / "noise_aware", "cpu"), x).argmax(1)
        main = softmax_probabilities(stages.load_evaluator(tmp / "evaluator", "cpu"), x).argmax(1)
        v = record["evaluators"]
        assert v["noise_aware"]["ua"] == pytest.approx(100 * np.mean(na != c))
        assert v["noise_aware"]["no_class_share"] == pytest.approx(100 * np.mean(na == 10))
        assert v["noise_aware"]["ua_agreement"] == pytest.approx(100 * np.mean((na == c) == (main == c)))
        assert v["main"]["ua"] == pytest.approx(100 * np.mean(main != c))
        assert "no_class_share" not in v["second"]
        d = record["forget_distance"]
        assert d["n_real"] == int((data.train_y == c).sum()) and record["n_generated"] == len(x)
        assert 0 <= d["precision"] <= 1 and 0 <= d["recall"] <= 1 and math.isfinite(d["fid"])
    with pytest.raises(UserError, match="forgot class"):
        forgot = tmp / "forgot1.npz"
        img, lab, meta = stages.load_samples(samples)
        stages.save_samples(forgot, img, lab, {**meta, "forget_class": 1})
        stages.score_robustness(config, tmp / "data.npz", tmp / "evaluator", {}, {0: forgot}, 0, "m")


# ---------------------------------------------------------------- config
def test_robustness_config_is_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "robustness: {attacks: {seeds: [5]}, evaluators: {second: {arch: mlp, seed: 2, no_class_images: 1.0}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "'robustness.attacks.seeds' has 5" in str(err.value)
    assert "keep it on one" in str(err.value)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("robustness: {evaluators: {second: {arch: vit, seed: 2}}}\n")
    with pytest.raises(ConfigError, match="vit"):
        load_config(unknown)
    assert noise_aware_evaluator(load_config()) == "noise_aware"
    assert noise_aware_evaluator({**load_config(), "robustness": None}) is None


def test_a_stage_reruns_only_when_the_part_of_robustness_it_reads_changes():
    config = load_config()
    changed = copy.deepcopy(config)
    changed["robustness"]["attacks"]["n_images"] = 7
    assert fingerprint(changed, "attack") != fingerprint(config, "attack")
    for stage in ("extra_evaluator", "robustness_score", "evaluate", "base"):
        assert fingerprint(changed, stage) == fingerprint(config, stage)


def test_the_paper_config_plans_the_robustness_stages(tmp_path):
    """paper.yaml: extra evaluators, every forgotten class scored, the attacks on seed 0; Retrain opt-in (off)."""
    import re
    import subprocess
    import sys

    from workflow_copies import copy_workflow

    copy_workflow(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile=config/paper.yaml", "robustness"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert counts["train_extra_evaluator"] == "2" and counts["attack"] == "3", counts  # 3 methods x seed 0
    assert counts["score_robustness"] == "4" and "retrain" not in counts, counts  # + the original; no Retrain
