"""Private names of other libraries appear only in adapter modules (``*_adapter.py``),
each pinned by its own ``test_*_adapter.py``: this test reads every other module of
``app/`` and fails, naming the file, line and name, where one reaches past a library's
public surface. What it finds:

- in a class, a ``_name`` (defined, called on ``self``/``cls``/``super()``) that a base
  class from another library defines: overriding or calling its private method;
- ``module._name`` on an imported module of another library (``logging._srcfile``);
- ``anything._name`` where no module of ``app/`` defines ``_name`` (``sock._read_event``);
- ``getattr``/``hasattr``/``setattr`` with a ``"_name"``.

What it cannot see: a private hook a library calls by duck typing on an object of ours
(as pywsgi's handler once called ``wsgi.input._discard``); those live in the adapters by
the same rule.
"""
from __future__ import annotations

import ast
import importlib
import pathlib

from tests.conftest import ROOT

APP = pathlib.Path(ROOT) / "app"
SELF = ("self", "cls")


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ours(owner) -> bool:
    return owner.__module__ == "app" or owner.__module__.startswith("app.")


def names_defined_in_app() -> set[str]:
    """Every name the modules of ``app/`` but the adapters bind: functions, classes,
    assigned names and attributes, ``__slots__`` entries."""
    names = set()
    for path in APP.rglob("*.py"):
        if path.name.endswith("_adapter.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Assign) and any(
                    getattr(target, "id", None) == "__slots__" for target in node.targets):
                names.update(each.value for each in ast.walk(node.value)
                             if isinstance(each, ast.Constant))
    return names


def foreign_owner(cls: type, name: str):
    """The first class of another library in ``cls``'s MRO that defines ``name``, or None."""
    return next((base for base in cls.__mro__ if name in vars(base) and not ours(base)), None)


def reaches(path: pathlib.Path, defined: set[str]) -> list[str]:
    module = importlib.import_module(module_name(path))
    tree = ast.parse(path.read_text())
    imported = {alias.asname or alias.name.split(".")[0]: alias.name
                for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    where = path.relative_to(ROOT)
    found = []
    for top in tree.body:
        if not isinstance(top, ast.ClassDef):
            continue
        cls = getattr(module, top.name)
        for node in ast.walk(top):
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in SELF:
                name = node.attr
            elif isinstance(node, ast.FunctionDef) and node in top.body:
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call) \
                    and getattr(node.value.func, "id", None) == "super":
                name = node.attr
            owner = foreign_owner(cls, name) if name and private(name) else None
            if owner is not None:
                found.append(f"{where}:{node.lineno} {owner.__module__}.{owner.__name__}.{name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and not (
                isinstance(node.value, ast.Name) and node.value.id in SELF):
            library = imported.get(getattr(node.value, "id", None))
            if library is not None and not library.startswith("app"):
                found.append(f"{where}:{node.lineno} {library}.{node.attr}")
            elif library is None and node.attr not in defined:
                found.append(f"{where}:{node.lineno} .{node.attr} (defined nowhere in app/)")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "getattr", "hasattr", "setattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and private(str(node.args[1].value)):
            found.append(f"{where}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_no_private_name_of_another_library_outside_an_adapter_module():
    defined = names_defined_in_app()
    found = [line for path in sorted(APP.rglob("*.py")) if not path.name.endswith("_adapter.py")
             for line in reaches(path, defined)]
    assert found == [], "move these into the library's adapter module (and pin them there):\n" \
        + "\n".join(found)


def test_every_adapter_module_has_its_pin_test():
    tests = pathlib.Path(ROOT) / "tests"
    for adapter in APP.rglob("*_adapter.py"):
        folder = adapter.parent.relative_to(APP)
        assert (tests / folder / f"test_{adapter.name}").exists(), adapter
