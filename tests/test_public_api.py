"""Every public name of the three packages says what it is: a docstring on each exported name and
on each public method and property its classes define."""

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

PACKAGES = ("maxp_core", "maxp_jax", "maxp_torch")
NAMESPACES = (*PACKAGES, "maxp_core.compat", "maxp_core.sweep", "maxp_torch.published")


def undocumented(package: str) -> list[str]:
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)):
            continue  # constants
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                described = (member.__doc__ or "").strip()
                documentable = inspect.isfunction(member) or isinstance(member, property)
                if not attr.startswith("_") and documentable and not described:
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("package", NAMESPACES)
def test_every_public_name_has_a_docstring(package) -> None:
    pytest.importorskip(package)
    assert undocumented(package) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_import_their_siblings_directly(package) -> None:
    """Inside a package, ``from <package> import X`` names a submodule, never a name the
    package's ``__init__`` re-exports (which would import through ``__init__`` and close a cycle)."""
    import ast
    import pkgutil

    module = importlib.import_module(package)
    through_init = []
    for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
        spec = importlib.util.find_spec(info.name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == package and node.level == 0:
                for alias in node.names:
                    if importlib.util.find_spec(f"{package}.{alias.name}") is None:
                        through_init.append(f"{info.name}: from {package} import {alias.name}")
    assert through_init == []
