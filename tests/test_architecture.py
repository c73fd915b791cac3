"""The structure the code keeps: the core names no method (everything a method needs comes from its file, as
benchopt's runner knows no solver), its modules import each other without a cycle, and no file outgrows one read."""

import ast
import re
from pathlib import Path

from unlearnbench.method_api import available_methods, load_method

CORE = "unlearnbench"
LONGEST = 600  # lines: past this a file mixes concerns (split it by what it does)


def core_files(root: Path) -> list[Path]:
    return sorted((root / CORE).rglob("*.py"))


def test_the_core_names_no_method(root):
    """No string of the core's code (docstrings aside) and no name it defines holds a method file's name or its
    DISPLAY_NAME as a word; the paper's numbers, claims and ablation are data files, not code."""
    names = {n for m in available_methods(root / "methods") for n in (m, load_method(m, root / "methods").DISPLAY_NAME)}
    word = re.compile(
        r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")(?![A-Za-z0-9])"
    )  # underscores and other punctuation are boundaries
    assert word.search("rte_sa_over_x") and word.search("SAFEMax ms/step") and not word.search("sampler")
    found = []
    for path in core_files(root):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = node.name
            else:  # a variable, an argument, an attribute
                text = getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "attr", None)
            if isinstance(text, str) and word.search(text):
                found.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}: {text[:80]!r}")
    assert not found, "method names in the core's code:\n" + "\n".join(found)


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> set[str]:
    """The core modules `path` imports, at module level or inside a function (relative imports resolved)."""
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            # `from package import module` is an edge to the module; `from module import name`, to the module
            found |= {f"{target}.{alias.name}" for alias in node.names} | {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_core_imports_without_a_cycle(root):
    """A cycle hides which layer depends on which (config <-> method_api and diffusion <-> training were two). A
    package's __init__ is a module of its own: it re-exports, and its own imports are its edges."""
    modules = {module_name(root, p): p for p in core_files(root)}
    graph = {name: {m for m in imports_of(root, path) if m in modules and m != name} for name, path in modules.items()}
    done, on_path, cycles = set(), [], []

    def visit(name):
        if name in on_path:
            cycles.append(" -> ".join(on_path[on_path.index(name) :] + [name]))
            return
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert not cycles


def test_no_file_outgrows_one_read(root):
    files = [*core_files(root), *(root / "methods").glob("*.py"), *(root / "metrics").glob("*.py")]
    long = {str(p.relative_to(root)): n for p in files if (n := len(p.read_text().splitlines())) > LONGEST}
    assert not long


# The layers below the stages: each receives the typed config section it uses (unlearnbench/settings.py).
SECTION_LAYERS = (
    "acceleration",
    "runtime",
    "training",
    "diffusion",
    "checkpoints",
    "data",
    "scaling",
    "networks",
    "cost",
    "files",
    "unet",
)  # settings.py itself parses the config into them


def test_the_layers_below_the_stages_receive_sections_not_the_config(root):
    """None of their functions takes a `config` parameter (the whole run config, a dict): a function that needs a
    section gets that section, so what it reads is named in its signature."""
    whole = []
    for name in SECTION_LAYERS:
        path = root / CORE / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                if "config" in names:
                    whole.append(f"{name}.{node.name}")
    assert not whole
