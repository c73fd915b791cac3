"""Attacks on an unlearned model (docs/robustness.md; config `robustness.attacks`): does the forgotten class come back?

- relearning: fine-tune on k real images of the forgotten class;
- resurgence: benign fine-tuning on the remaining classes only (Suriyakumar et al. 2024);
- partial diffusion: real images of the class noised to a fraction s of T, denoised under its label by the model
  (Sen Sharma et al. 2024, "Unlearning or Concealment?").

Fine-tuning uses the base model's recipe (lr, batch size capped by the images at hand, gradient clipping, label
dropout, loss), without warm-up or EMA: an attacker uses the weights it trains. Every measurement samples the same
noise (so the points of a curve differ by the weights alone) with the evaluation sampler, and scores the images with
the main evaluator and, when given, the noise-aware one. Run on Retrain too: a model that relearns much faster
than Retrain hid the class rather than removed it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from metrics.forgetting import softmax_probabilities, unlearning_accuracy
from metrics.robustness import no_class_verdicts, steps_to_recover

from .. import checkpoints as ckpt
from ..config import config_hash
from ..cost import CostMeter
from ..data import ImageData, class_subset, to_float
from ..diffusion import Schedule, denoise_from, epsilon_loss, sample_as_configured
from ..errors import UserError
from ..scaling import scaled_value
from ..settings import Performance, SamplerSettings, Settings
from ..training import BatchStream, optimizer_step, prepare_model, seed_everything, setup_runtime
from .foundation import load_evaluator
from .sampling import sampling_seed
from .scoring import versions

RECOVERED_BELOW = 50.0  # UA (%) under which the forgotten class counts as recognised again
FINE_TUNING_ATTACKS = ("relearning", "resurgence")


def attack_settings(config: dict) -> dict:
    """robustness.attacks with the fine-tuning budgets scaled as the methods' step counts are (scaling.py rule
    "steps": x scale.steps), what ran."""
    attacks = copy.deepcopy(config["robustness"]["attacks"])
    settings = Settings.parse(config)
    shape = (1, 1, 1)  # the steps rule does not depend on the images
    for attack in FINE_TUNING_ATTACKS:
        for key in ("steps", "every"):
            attacks[attack][key] = scaled_value(
                "steps", attacks[attack][key], settings.scale, shape, settings.diffusion.loss_reduction
            )
    return attacks


def record_points(steps: int, every: int) -> list[int]:
    """The steps at which a fine-tuning attack is measured: 0, every `every`, and the last."""
    return sorted({0, *range(every, steps + 1, every), steps})


class Judge:
    """Scores `n` generations of the forgotten class by a model (the evaluation sampler), always from the same
    noise."""

    def __init__(
        self,
        n: int,
        sampler: SamplerSettings,
        schedule: Schedule,
        performance: Performance,
        device,
        evaluator,
        noise_aware,
        forget_class: int,
        seed: int,
    ):
        self.n, self.sampler, self.schedule, self.performance = n, sampler, schedule, performance
        self.device, self.forget_class = device, forget_class
        self.evaluator, self.noise_aware = evaluator, noise_aware  # noise_aware: (model, info) or None
        self.noise_seed = sampling_seed(seed, forget_class) + 1  # not the evaluation's: these are other images

    def verdicts(self, images: torch.Tensor) -> dict:
        out = {"ua": unlearning_accuracy(softmax_probabilities(self.evaluator, images), self.forget_class)}
        if self.noise_aware is not None:
            model, info = self.noise_aware
            v = no_class_verdicts(softmax_probabilities(model, images), self.forget_class, info["no_class"])
            out |= {"ua_noise_aware": v["ua_noise_aware"], "no_class_share": v["no_class_share"]}
        return out

    def generations(self, model) -> dict:
        labels = torch.full((self.n,), self.forget_class, dtype=torch.long)
        images = sample_as_configured(
            model,
            self.sampler,
            self.schedule,
            labels,
            torch.Generator().manual_seed(self.noise_seed),
            self.device,
            performance=self.performance,
        )
        return self.verdicts(images.clamp(-1, 1))


def fine_tune(
    model,
    schedule: Schedule,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    base: dict,
    reduction: str,
    steps: int,
    every: int,
    generator: torch.Generator,
    device,
    measure,
    meter: CostMeter,
) -> list[dict]:
    """Fine-tune `model` on (images, labels) with the base recipe; measure(model) at record_points (outside the
    meter's RTE). Returns [{step, **verdicts}]."""
    stream = BatchStream(
        images, labels, min(base["batch_size"], len(images)), generator, device, hflip=base.get("hflip", False)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=base["lr"])
    points, step = [], 0
    for target in record_points(steps, every):
        model.train()
        with meter.timed():
            while step < target:
                x0, y = next(stream)
                loss = epsilon_loss(
                    model,
                    schedule,
                    x0,
                    y,
                    reduction=reduction,
                    cond_dropout=base.get("cond_dropout", 0.0),
                    generator=generator,
                )
                optimizer_step(optimizer, loss, model.parameters(), base.get("grad_clip"))
                step += 1
        points.append({"step": step, **measure(model)})
    return points


def partial_diffusion(
    model,
    schedule: Schedule,
    real: torch.Tensor,
    forget_class: int,
    strengths,
    sampler: SamplerSettings,
    generator: torch.Generator,
    judge: Judge,
) -> list[dict]:
    """Real images of the class noised to t = s T (the same noise for every s), denoised under its label in
    round(s x sampler.steps) guided steps; the verdicts on the results, per s."""
    noise = torch.randn(real.shape, generator=generator)
    labels = torch.full((len(real),), forget_class, dtype=torch.long)
    device = next(model.parameters()).device
    out = []
    for s in strengths:
        t_start = max(0, round(s * schedule.timesteps) - 1)
        x_t = schedule.q_sample(real, torch.full((len(real),), t_start, dtype=torch.long), noise)
        images = denoise_from(
            model,
            schedule,
            x_t.to(device),
            t_start,
            labels,
            steps=max(1, round(s * sampler.steps)),
            eta=sampler.eta,
            guidance_w=float(sampler.guidance_w),
            generator=generator,
            clip_x0=sampler.clip_x0,
            batch_size=sampler.batch_size,
        )
        out.append({"s": float(s), "t_start": t_start, **judge.verdicts(images.clamp(-1, 1))})
    return out


def attack_model(
    config: dict,
    model_dir,
    data: ImageData,
    forget_class: int,
    seed: int,
    method: str,
    device,
    evaluator,
    noise_aware=None,
) -> dict:
    """Every attack of robustness.attacks on one model; the record of its points, summary and costs."""
    attacks, settings = attack_settings(config), Settings.parse(config)
    base, reduction = config["base"], settings.diffusion.loss_reduction
    schedule = Schedule.of(settings.diffusion)
    judge = Judge(
        attacks["n_images"],
        settings.sampler,
        schedule,
        settings.runtime.performance,
        device,
        evaluator,
        noise_aware,
        forget_class,
        seed,
    )
    rng = np.random.default_rng(sampling_seed(seed, forget_class))
    x_f, _ = class_subset(data.train_x, data.train_y, [forget_class])
    x_r, y_r = class_subset(data.train_x, data.train_y, [c for c in range(data.num_classes) if c != forget_class])

    def fresh():
        return prepare_model(ckpt.load_unet(model_dir), settings.runtime.performance, device)

    points, costs, summary = [], {}, {}
    relearn = attacks["relearning"]
    for k in relearn["k"]:
        if k > len(x_f):
            raise UserError(
                f"relearning on k = {k} images: class {forget_class} has {len(x_f)} train images; lower "
                "robustness.attacks.relearning.k"
            )
        chosen = torch.as_tensor(x_f[rng.choice(len(x_f), k, replace=False)])
        seed_everything(seed)
        with CostMeter(device) as meter:
            curve = fine_tune(
                fresh(),
                schedule,
                to_float(chosen),
                torch.full((k,), forget_class, dtype=torch.long),
                base=base,
                reduction=reduction,
                steps=relearn["steps"],
                every=relearn["every"],
                generator=torch.Generator().manual_seed(seed),
                device=device,
                measure=judge.generations,
                meter=meter,
            )
        costs[f"relearning_k{k}"] = meter.result()
        points += [{"attack": "relearning", "param": "k", "value": k, **p} for p in curve]
        summary[f"relearn_steps_to_recover_k{k}"] = steps_to_recover(
            [p["step"] for p in curve], [p["ua"] for p in curve], RECOVERED_BELOW
        )
    resurgence = attacks["resurgence"]
    seed_everything(seed)
    with CostMeter(device) as meter:
        curve = fine_tune(
            fresh(),
            schedule,
            to_float(x_r),
            torch.as_tensor(y_r),
            base=base,
            reduction=reduction,
            steps=resurgence["steps"],
            every=resurgence["every"],
            generator=torch.Generator().manual_seed(seed),
            device=device,
            measure=judge.generations,
            meter=meter,
        )
    costs["resurgence"] = meter.result()
    points += [{"attack": "resurgence", "param": None, "value": None, **p} for p in curve]
    summary["resurgence_ua_final"] = curve[-1]["ua"]
    probe = attacks["partial_diffusion"]
    n_real = min(attacks["n_images"], len(x_f))
    real = to_float(x_f[rng.choice(len(x_f), n_real, replace=False)])
    with CostMeter(device) as meter, meter.timed():
        curve = partial_diffusion(
            fresh(),
            schedule,
            real,
            forget_class,
            probe["strengths"],
            settings.sampler,
            torch.Generator().manual_seed(sampling_seed(seed, forget_class)),
            judge,
        )
    costs["partial_diffusion"] = meter.result()
    points += [{"attack": "partial_diffusion", "param": "s", "value": p.pop("s"), "step": None, **p} for p in curve]
    summary["partial_diffusion_ua_mean"] = float(np.mean([p["ua"] for p in curve]))
    return {
        "method": method,
        "forget_class": forget_class,
        "seed": seed,
        "points": points,
        "summary": summary,
        "settings": {
            **attacks,
            "lr": base["lr"],
            "batch_size": base["batch_size"],
            "grad_clip": base.get("grad_clip"),
            "cond_dropout": base.get("cond_dropout", 0.0),
            "loss_reduction": reduction,
            "recovered_below_ua": RECOVERED_BELOW,
            "n_real_partial_diffusion": n_real,
        },
        "cost": costs,
        "provenance": {
            "run_name": config["run_name"],
            "config_hash": config_hash(config),
            "model_dir": str(model_dir),
            "model_digest": ckpt.folder_digest(model_dir),
            "noise_aware": noise_aware is not None,
            "versions": versions(),
        },
    }


def attack_models(
    config: dict, data_path, evaluator_dir, noise_aware_dir, models: dict, seed: int, method: str, out_paths: dict
) -> list[dict]:
    """attack_model on each model of `models` ({forget class: UNet folder}), one record per class in `out_paths`."""
    device = setup_runtime(Settings.parse(config).runtime)
    data = ImageData.load(data_path)
    evaluator = load_evaluator(evaluator_dir, device)
    noise_aware = None
    if noise_aware_dir:
        noise_aware = (load_evaluator(noise_aware_dir, device), ckpt.read_json(f"{noise_aware_dir}/evaluator.json"))
        if noise_aware[1].get("no_class") is None:
            raise UserError(
                f"{noise_aware_dir} is an evaluator without a 'no class' output: pass the noise-aware "
                "one (robustness.evaluators, the one with no_class_images)"
            )
    records = []
    for forget_class, model_dir in models.items():
        record = attack_model(config, model_dir, data, forget_class, seed, method, device, evaluator, noise_aware)
        ckpt.write_json(out_paths[forget_class], record)
        records.append(record)
        print(f"{method} class {forget_class}: " + ", ".join(f"{k} {v}" for k, v in record["summary"].items()))
    return records
