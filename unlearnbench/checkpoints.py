"""Checkpoints: UNets in diffusers' folder format (config.json + safetensors), written atomically; resumable training state."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DivergedError, MissingResourceError
from .files import atomic_output, atomic_write_text, removed_on_failure
from .networks import UNET_PRESETS
from .settings import ModelSettings
from .unet import WEIGHTS_NAME, UNet, resolve_config


def write_json(path: str | Path, record: dict, *, allow_nan: bool = True) -> None:
    """A record as indented JSON, atomically. allow_nan=False refuses NaN/inf (strict JSON) with a ValueError."""
    atomic_write_text(path, json.dumps(record, indent=2, default=_json_default, allow_nan=allow_nan) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise MissingResourceError(f"{path} is missing: the step that writes it has not run or failed")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # cut short, emptied or overwritten: not the job's record
        raise MissingResourceError(
            f"{path} is not a valid JSON record ({exc}): it was cut short or overwritten. "
            "Delete it and rerun: the step that wrote it remakes it"
        ) from None


def require_finite(weights, what: str, hint: str) -> None:
    """Raise DivergedError if any of `weights` (a module's parameters and buffers, or tensors) is NaN or inf.

    Why: a diverged run otherwise saves NaN weights whose samples quantise to black images, and every metric
    downstream would look like a real (bad) result. One device sync for the whole check.
    """
    if isinstance(weights, torch.nn.Module):
        weights = [*weights.parameters(), *weights.buffers()]
    tensors = [t.detach() for t in weights if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
    total = sum(t.numel() for t in tensors)
    raise DivergedError(f"{what}: {bad:,} of {total:,} values are NaN or inf. {hint}")


def load_users_unet(folder: str | Path, expect: dict, what: str, fix: str, mismatch_fix: str | None = None):
    """A UNet the user supplies (base.checkpoint, an imported model): the config's model, with finite weights."""
    model = load_unet(folder, expect=expect, mismatch_fix=mismatch_fix)
    require_finite(model, what, f"Its weights are unusable: {fix}.")
    return model


def save_unet(model, folder: str | Path) -> None:
    """save_pretrained into a temporary sibling, then rename: a killed job never leaves a half-written model."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with removed_on_failure(tmp):
        model.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)


def folder_digest(folder: str | Path) -> str:
    """sha256 over a folder's files (names and bytes): ties saved samples to the exact weights that drew them."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# A corrupt folder the workflow wrote is redone; a user's own checkpoint (base.checkpoint) must not be deleted.
_REDO = (
    "If the workflow wrote it (under results/), delete it and re-run the step that wrote it; if it is your "
    "base.checkpoint, copy it again from where it came from."
)


def load_unet(folder: str | Path, device="cpu", expect: dict | None = None, mismatch_fix: str | None = None):
    """Load a UNet saved by save_unet (or by diffusers' UNet2DModel.save_pretrained); a missing, corrupt,
    unsupported or mismatched checkpoint gets an actionable error."""

    folder = Path(folder)
    read_unet_config(folder, expect, mismatch_fix)
    try:
        model = UNet.from_pretrained(folder)
    except Exception as exc:
        model = _convert_with_diffusers(folder)
        if model is None:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            if isinstance(exc, RuntimeError) and lines and "loading state_dict" in lines[0]:
                raise MissingResourceError(
                    f"UNet checkpoint at {folder}: its weights do not fit its config.json ({'; '.join(lines[1:3])[:400]}). "
                    "The two must come from one save_pretrained of the same model."
                ) from None
            raise MissingResourceError(
                f"UNet checkpoint at {folder} is corrupt or incomplete ({type(exc).__name__}: "
                f"{(lines or [''])[0][:300]}). {_REDO}"
            ) from None
    return model.to(device)


def read_unet_config(folder: str | Path, expect: dict | None = None, mismatch_fix: str | None = None) -> dict:
    """A saved UNet's config.json, checked: there, readable, a UNet the suite implements and (given `expect`, a
    unet_expectations) the config's model. Reads no weights, so the workflow checks users' folders before any job.
    `mismatch_fix` replaces the advice for a model of another architecture (one that is not the base model's)."""

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise MissingResourceError(
            f"no UNet checkpoint at {folder} (config.json missing). Re-run the step that "
            f"trains it, or point base.checkpoint to a folder saved with save_pretrained."
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise MissingResourceError(
            f"UNet checkpoint at {folder} is corrupt or incomplete (config.json: {exc}). {_REDO}"
        ) from None
    try:
        if not isinstance(config, dict):
            raise ValueError("its config.json holds no mapping of UNet2DModel arguments")
        if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ValueError(f"UNet config describes a {config['_class_name']}, not a UNet2DModel")
        resolved = resolve_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (ValueError, TypeError) as exc:
        raise MissingResourceError(
            f"UNet checkpoint at {folder} cannot be used: {exc}. The suite's UNet "
            f"(unlearnbench/unet.py) implements the class-conditional UNet2DModel of its presets."
        ) from None
    if expect:
        have = _architecture(resolved)
        differ = {
            key: f"{key} is {have.get(key)!r}, the config needs {want!r}"
            for key, want in _architecture(expect).items()
            if have.get(key) != want
        }
        if differ:
            if mismatch_fix:
                fix = mismatch_fix
            elif "num_class_embeds" in differ:  # fixed by the data, not by the model section
                fix = "Use a checkpoint trained on this dataset's classes (num_class_embeds = classes + 1 null label)."
            else:
                fix = (
                    "Use a checkpoint of the config's architecture, or describe this one in the config's "
                    "model.overrides (its keys are those of config.json, e.g. {dropout: 0.1})."
                )
            raise MissingResourceError(
                f"UNet checkpoint at {folder} is not the config's model: {'; '.join(differ.values())}. {fix}"
            )
    return config


def _architecture(unet_config: dict) -> dict:
    """A resolved UNet config with equivalent spellings made equal: what decides the network's computation."""
    arch = {
        k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in unet_config.items() if not k.startswith("_")
    }
    arch.pop("num_train_timesteps", None)  # used by learned time embeddings only, which the UNet does not support
    arch["act_fn"] = "silu" if arch.get("act_fn") == "swish" else arch.get("act_fn")
    arch["time_embedding_dim"] = arch.get("time_embedding_dim") or arch["block_out_channels"][0] * 4
    arch["attn_norm_num_groups"] = arch.get("attn_norm_num_groups") or arch["norm_num_groups"]
    # attention_head_dim None means one head over the block's channels: compare the head sizes actually used
    chans, head = arch["block_out_channels"], arch.pop("attention_head_dim", None)
    sizes = {
        "down": [head or ch for ch, kind in zip(chans, arch["down_block_types"]) if kind.startswith("Attn")],
        "mid": (head or chans[-1]) if arch.get("add_attention", True) else None,
        "up": [head or ch for ch, kind in zip(reversed(chans), arch["up_block_types"]) if kind.startswith("Attn")],
    }
    arch["attention_head_sizes"] = sizes
    return arch


def check_weights_file(path: str | Path) -> None:
    """A safetensors file is whole: its header parses and the tensors it lists end where the file does. Reads the
    header only (a few kB), so a job checks every model it will read before its loop, and validation checks the
    user's models, instead of a load failing after hours of steps."""
    path = Path(path)
    problem = None
    try:
        with open(path, "rb") as fh:
            size = path.stat().st_size
            length = int.from_bytes(fh.read(8), "little") if size >= 8 else None
            if length is None or not 2 <= length <= size - 8:
                problem = f"{size} bytes, too short for its header"
            else:
                header = json.loads(fh.read(length))
                ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
                if 8 + length + max(ends, default=0) != size:
                    problem = f"{size:,} bytes where its header lists {8 + length + max(ends, default=0):,}"
    except FileNotFoundError:
        problem = "missing"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        problem = f"its header is not valid safetensors ({type(exc).__name__})"
    if problem:
        raise MissingResourceError(f"weights file {path} is corrupt or incomplete ({problem}). {_REDO}")


def check_unet_folder(folder: str | Path, expect: dict | None = None, mismatch_fix: str | None = None) -> None:
    """A saved UNet folder is usable, without loading it: its config.json (read_unet_config) and whole weights."""
    read_unet_config(folder, expect, mismatch_fix)
    if (Path(folder) / WEIGHTS_NAME).exists() or not any(Path(folder).glob("*.bin")):  # .bin: older diffusers'
        check_weights_file(Path(folder) / WEIGHTS_NAME)


def same_weights(model, folder: str | Path) -> bool:
    """Whether `model` holds exactly the weights saved in the UNet folder (bit for bit, every tensor)."""

    path = Path(folder) / WEIGHTS_NAME
    if not path.exists():
        return False
    check_weights_file(path)
    saved = load_file(str(path))
    mine = getattr(model, "_orig_mod", model).state_dict()  # torch.compile(model) prefixes its keys
    return saved.keys() == mine.keys() and all(
        saved[k].dtype == v.dtype and torch.equal(saved[k], v.detach().cpu()) for k, v in mine.items()
    )


def _convert_with_diffusers(folder: Path):
    """A checkpoint in a layout diffusers reads but UNet.from_pretrained does not (a pickled .bin of older
    diffusers, attention weights under their pre-0.15 names): diffusers loads and renames it. Only for such
    user-supplied checkpoints, so only they pay diffusers' import. None if diffusers cannot read it either."""

    try:
        from diffusers.models.unets.unet_2d import UNet2DModel

        theirs = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False)
        model = UNet(**{k: v for k, v in theirs.config.items() if not k.startswith("_")})
        model.load_state_dict(theirs.state_dict())
    except Exception:
        return None
    print(f"converted the UNet checkpoint at {folder} with diffusers (an older file layout)")
    return model


def unet_expectations(model: ModelSettings, num_classes: int) -> dict:
    """The full UNet config the run's model section builds: a checkpoint used in its place must match all of it."""
    preset = {**UNET_PRESETS[model.preset], **model.overrides}
    return dict(resolve_config({**preset, "num_class_embeds": num_classes + 1}))


def save_state(path: str | Path, state: dict, key: str | None = None) -> None:
    """torch.save to a temporary name, then rename (resumable training state).

    `key` names what the state belongs to (config, params, code); load_state resumes only a state of the same key.
    """
    with atomic_output(path) as tmp:
        torch.save({**state, "state_key": key}, tmp)


def load_state(path: str | Path, key: str | None = None):
    """The state saved at `path` under the same `key`, else None (training starts over and overwrites it).

    Why the key: a job rerun after a config or code change would otherwise resume the half-finished run of the
    old one (its weights, optimizer and learning rate) and pass the mixture off as a run of the new config.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        # A state file that cannot be read is as good as none: training restarts from scratch.
        print(f"note: ignoring {path}: it cannot be read; starting over")
        return None
    if not isinstance(state, dict) or state.get("state_key") != key:
        print(f"note: ignoring {path}: it was saved by a run with another config, parameters or code; starting over")
        return None
    return state


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:

    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:

    path = Path(path)
    if not path.exists():
        raise MissingResourceError(f"{path} is missing: re-run the step that writes it")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise MissingResourceError(f"{path} is corrupt ({exc}); delete it and re-run the step that writes it") from None
