"""DVC stage deps cannot drift from the code: every project file a stage's command imports
(transitively, found with ``ast``, never by importing) is covered by one of its deps, and
every dep under ``pipeline/`` exists. Runs without TensorFlow or any project module."""

from __future__ import annotations

import ast
import os
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = ("dvc.yaml", "tuning/dvc.yaml")
VARIABLE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def module_file(root: Path, name: str) -> Path | None:
    """The file under ``root`` that defines module ``name`` (``a/b.py`` or
    ``a/b/__init__.py``), or None when it is not a project module."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    """Dotted name of the project file ``path`` (a package's ``__init__.py`` names it)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imported_names(path: Path, name: str) -> frozenset[str]:
    """Every module name ``path`` (module ``name``) may import, anywhere in its tree
    (inside functions, under ``if TYPE_CHECKING``, ...); ``from m import x`` yields both
    ``m`` and ``m.x``, since ``x`` may be a submodule. Relative imports are made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(n for n in names if n)


def project_files(root: Path, modules: list[str]) -> set[Path]:
    """Project files loaded by importing ``modules``, transitively; importing ``a.b.c``
    also runs ``a/__init__.py`` and ``a/b/__init__.py``, which are followed as well."""
    todo, seen = list(modules), set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(root, ".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_names(path, module_name(root, path)))
    return seen


def entry_modules(cmd: str | list[str], wdir: Path) -> list[str]:
    """Modules a stage ``cmd`` runs: ``python -m pkg.mod`` (a package: its ``__main__``)
    and ``python path/to/file.py`` (relative to ``wdir``)."""
    tokens = shlex.split(" && ".join([cmd] if isinstance(cmd, str) else cmd))
    found = []
    for prog, arg, rest in zip(tokens, tokens[1:], [*tokens[2:], ""], strict=False):
        if not os.path.basename(prog).startswith("python"):
            continue
        if arg == "-m" and rest:
            path = module_file(ROOT, rest)
            found.append(f"{rest}.__main__" if path and path.name == "__init__.py" else rest)
        elif arg.endswith(".py"):
            found.append(module_name(ROOT, (wdir / arg).resolve()))
    return found


def resolve(value, context: dict, where: str):
    """``value`` with every ``${a.b}`` replaced from ``context`` (plain dict lookup)."""
    if isinstance(value, dict):
        return {resolve(k, context, where): resolve(v, context, where) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context, where) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(match):
        node = context
        for key in match.group(1).split("."):
            if not isinstance(node, dict) or key not in node:
                pytest.fail(f"{where}: unknown variable ${{{match.group(1)}}} (not in params.yaml)")
            node = node[key]
        return str(node)

    return VARIABLE.sub(lookup, value)


def load_stage(dvc_file: str, stage: str) -> tuple[Path, list[str], str | list[str]]:
    """(wdir, dep paths relative to wdir, cmd) of a stage, templating resolved."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) or {}
    raw = yaml.safe_load((ROOT / dvc_file).read_text())["stages"][stage]
    spec = resolve(raw, params, f"{dvc_file}:{stage}")
    wdir = ((ROOT / dvc_file).parent / spec.get("wdir", ".")).resolve()
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    return wdir, deps, spec["cmd"]


@pytest.fixture(autouse=True)
def _restore_mlflow_uri_variable():
    """Overrides conftest's autouse fixture of that name: these tests never touch MLflow,
    and importing it would cost about a second."""
    yield


STAGES = [(f, s) for f in DVC_FILES for s in yaml.safe_load((ROOT / f).read_text())["stages"]]
IDS = [f"{f}:{s}" for f, s in STAGES]


@pytest.mark.parametrize(("dvc_file", "stage"), STAGES, ids=IDS)
def test_deps_cover_imports(dvc_file, stage):
    wdir, deps, cmd = load_stage(dvc_file, stage)
    modules = entry_modules(cmd, wdir)
    assert modules, f"{dvc_file}:{stage}: no `python -m` / `python x.py` in cmd {cmd!r}"
    covered = [(wdir / d).resolve() for d in deps]
    missing = sorted(
        os.path.relpath(path, wdir) for path in project_files(ROOT, modules)
        if not any(path == dep or dep in path.parents for dep in covered)
    )
    assert not missing, (
        f"{dvc_file}:{stage} imports project files that no dep covers: {', '.join(missing)}\n"
        "add to its deps:\n" + "\n".join(f"      - {m}" for m in missing)
    )


@pytest.mark.parametrize(("dvc_file", "stage"), STAGES, ids=IDS)
def test_pipeline_deps_exist(dvc_file, stage):
    wdir, deps, _ = load_stage(dvc_file, stage)
    stale = [d for d in deps if (wdir / d).resolve().is_relative_to(ROOT / "pipeline")
             and not (wdir / d).exists()]
    assert not stale, f"{dvc_file}:{stage} has deps on missing files (moved?): {stale}"


def test_walker_on_tiny_package(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/main.py": "from . import helper\n\ndef run():\n    import pkg.sub.deep\n",
        "pkg/helper.py": "import os\nfrom pkg import extra, VERSION\n",
        "pkg/extra.py": "",
        "pkg/sub/__init__.py": "from .leaf import thing\n",
        "pkg/sub/leaf.py": "thing = 1\n",
        "pkg/sub/deep.py": "import numpy\n",
        "pkg/unused.py": "import pkg.extra\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = {p.relative_to(tmp_path).as_posix() for p in project_files(tmp_path, ["pkg.main"])}
    assert found == {
        "pkg/__init__.py",  # parent of every pkg.* module
        "pkg/main.py",  # the entry
        "pkg/helper.py",  # relative `from . import helper`
        "pkg/extra.py",  # `from pkg import extra` names a submodule (VERSION does not)
        "pkg/sub/deep.py",  # imported inside a function
        "pkg/sub/__init__.py",  # parent package of pkg.sub.deep
        "pkg/sub/leaf.py",  # relative import in that __init__
    }
