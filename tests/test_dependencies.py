"""The declared dependencies match the imports: every package the code imports is the standard library's or
declared in pyproject.toml (the product's in ``dependencies``; what only tests, benchmarks and infra scripts use in
the ``dev`` extra), and every runtime dependency is imported by the product (or listed below with the reason)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO_ROOT

PRODUCT = ("pipeline", "model", "jobs")
"""What ``pip install hmhi-uvos`` runs: its imports must be in ``dependencies``."""
DEVELOPMENT = ("tests", "bench", "infra")
"""Run from a checkout with the ``dev`` extra: imports in ``dependencies`` or ``dev``."""
USED_WITHOUT_AN_IMPORT = {
    "tensorboard": "torch.utils.tensorboard (the training metrics writer) needs it",
}
"""Runtime dependencies the product needs although no module imports them by name."""


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}, {
        _name(r) for r in project["optional-dependencies"]["dev"]
    }


@functools.cache
def _imports(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level names of third-party modules imported below ``folders`` -> the files importing them."""
    local = {p.stem for p in REPO_ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}  # jobs/ has no __init__
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            siblings = {
                p.stem for p in path.parent.iterdir()
            }  # scripts import their neighbours (bench/common)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {name.split(".")[0] for name in names}:
                    # _typeshed: the type checkers' own stubs, imported only under TYPE_CHECKING
                    if top not in sys.stdlib_module_names | {"_typeshed"} and top not in local | siblings:
                        found.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Import names -> the installed distributions providing them (normalised), e.g. cv2 -> opencv-python."""
    providers = _providers()
    out: dict[str, set[str]] = {}
    optional = _optional()
    for module, files in modules.items():
        if module in optional:  # an optional extra's module: the product imports it where installed
            continue
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)[0]}) is not installed"
        out[module] = dists
    return out


def _optional() -> set[str]:
    """Distributions of the optional extras other than dev (e.g. torchcodec, the 'video' extra), whose import
    names are their distribution names."""
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {_name(r) for extra, requirements in extras.items() if extra != "dev" for r in requirements}


def test_every_import_is_declared():
    runtime, dev = _declared()
    for folders, allowed, where in (
        (PRODUCT, runtime, "dependencies"),
        (DEVELOPMENT, runtime | dev, "dependencies or the dev extra"),
    ):
        imports = _imports(folders)
        undeclared = {
            module: sorted(imports[module])[0]
            for module, dists in _distributions(imports).items()
            if not dists & allowed
        }
        assert not undeclared, f"imported but not declared in {where}: {undeclared}"


def test_every_runtime_dependency_is_used_by_the_product():
    runtime, dev = _declared()
    provided = set().union(*_distributions(_imports(PRODUCT)).values())
    unused = runtime - provided - set(USED_WITHOUT_AN_IMPORT)
    assert not unused, f"declared in dependencies but never imported by {PRODUCT}: {sorted(unused)}"
    assert not runtime & dev, "a package declared twice"
    only_dev_code = set().union(*_distributions(_imports(DEVELOPMENT)).values()) - provided
    assert not only_dev_code & runtime - set(USED_WITHOUT_AN_IMPORT), (
        f"used only by tests, benchmarks or infra scripts: move to the dev extra: {sorted(only_dev_code & runtime)}"
    )


def test_the_checks_see_the_imports():
    """The scan finds what it must: a known product import and a known test-only one, with their packages."""
    product = _distributions(_imports(PRODUCT))
    assert product["cv2"] == {"opencv-python"} and product["yaml"] == {"pyyaml"} and "pipeline" not in product
    assert "pipeline/storage.py" in _imports(PRODUCT)["botocore"]  # lazy imports inside functions count too
    development = _imports(DEVELOPMENT)
    assert "moto" in development and "common" not in development  # bench/common.py is bench's own
