"""Every public name of the three packages says what it is: a docstring on each exported name and
on each public method and property its classes define."""

import importlib
import inspect

import pytest

PACKAGES = ("maxp_core", "maxp_jax", "maxp_torch")


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


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring(package) -> None:
    pytest.importorskip(package)
    assert undocumented(package) == []
