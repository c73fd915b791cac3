"""environment.yml (conda, GPU machines) and pyproject.toml (pip) must pin the same packages."""
import tomllib

import yaml


def _pins(lines):
    out = {}
    for line in lines:
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def test_environment_yml_matches_pyproject(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == _pins(project)
    assert "-e ." in pip_section  # the suite itself, with its CLI


def test_pynvml_comes_from_nvidia_ml_py(root):
    """nvidia-ml-py provides the pynvml module; the deprecated 'pynvml' package must not be pulled in."""
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split("==")[0].lower() for d in deps}
    assert "nvidia-ml-py" in names and "pynvml" not in names
    import importlib
    import importlib.metadata as md
    import warnings

    assert any(str(f) == "pynvml.py" for f in md.files("nvidia-ml-py"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated pynvml package warns on import
        importlib.import_module("pynvml")
