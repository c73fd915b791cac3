"""requirements.lock (what CI installs) pins a version of every dependency inside pyproject.toml's ranges, and
environment.yml (conda, GPU machines) installs exactly that lock."""

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked(root) -> dict[str, str]:
    pins = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_dependency_inside_pyprojects_ranges(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    pins = locked(root)
    outside = []
    for text in wanted:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            outside.append(f"{text} (locked: {version})")
    assert not outside


def test_environment_yml_installs_the_lock(root):
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-r requirements.lock", "-e .[test]"]


def test_pynvml_comes_from_nvidia_ml_py(root):
    """nvidia-ml-py provides the pynvml module; the deprecated 'pynvml' package must not be pulled in."""
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {Requirement(d).name.lower() for d in deps}
    assert "nvidia-ml-py" in names and "pynvml" not in names
    import importlib
    import importlib.metadata as md
    import warnings

    assert any(str(f) == "pynvml.py" for f in md.files("nvidia-ml-py"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated pynvml package warns on import
        importlib.import_module("pynvml")
