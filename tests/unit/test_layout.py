"""The layering rules, read from the source (ast, so imports inside functions count too).

- shared/ is the common library: it imports no service package. That includes the dev tools that live
  there (the stack launcher, the profiles, the settings-doc generator): they reach a service by running
  it (``python -m llm.model_fetch``) or by module name (importlib), never by an import statement.
- No module imports an underscore-private name from another module of the project: what two modules
  share is public.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SERVICES = ("gateway", "ingestion", "chat", "embedding", "llm", "authorizer", "api")
PROJECT = ("shared", *SERVICES, "bench", "tests")


def modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an ImportFrom reads from, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import statement in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = absolute(node, path)
            if source:
                yield node.lineno, source
            else:  # `from ... import chat` (relative, up to the root): the names are the modules
                for alias in node.names:
                    yield node.lineno, alias.name


def is_service(module: str) -> bool:
    return module.split(".")[0] in SERVICES


def shared_imports_of_services() -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in modules("shared")
        for line, module in imported_modules(path)
        if is_service(module)
    ]


def private_imports() -> list[str]:
    """`from project.module import _name` anywhere in the project (dunders are not private)."""
    found = []
    for path in modules(*PROJECT):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = absolute(node, path)
            if source.split(".")[0] not in PROJECT:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.endswith("__")
                if private or any(part.startswith("_") and not part.endswith("__") for part in source.split(".")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {alias.name}")
    return found


def test_shared_imports_no_service_package() -> None:
    assert modules("shared"), "no modules found under shared/"
    assert shared_imports_of_services() == []


def test_no_private_name_is_imported_across_modules() -> None:
    assert private_imports() == []


# -- the checks themselves catch what they are meant to catch


@pytest.fixture
def fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    for pkg in PROJECT:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    return tmp_path


def test_a_service_import_inside_a_function_is_found(fake_tree: Path) -> None:
    (fake_tree / "shared" / "tool.py").write_text("def main():\n    from llm.model_fetch import ensure_model\n")
    (fake_tree / "shared" / "ok.py").write_text("import importlib\nimport shared.errors\nimport llmx\n")
    (fake_tree / "shared" / "sub").mkdir()
    (fake_tree / "shared" / "sub" / "rel.py").write_text("from ... import chat\n")
    assert shared_imports_of_services() == [
        "shared/sub/rel.py:1: imports chat",
        "shared/tool.py:2: imports llm.model_fetch",
    ]


def test_a_private_import_is_found(fake_tree: Path) -> None:
    (fake_tree / "gateway" / "a.py").write_text("from gateway.b import _helper, public\nfrom os import _exit\n")
    (fake_tree / "tests" / "t.py").write_text("def f():\n    from ._private import x\n    from shared import __all__\n")
    assert private_imports() == [
        "gateway/a.py:1: from gateway.b import _helper",
        "tests/t.py:2: from tests._private import x",
    ]
