"""The README is the manual: its settings section is the generated one, verbatim, and the two commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings_doc import TABLES, render, section_of, settings_class, variables
from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_settings_section_is_the_generated_one() -> None:
    expected, actual = render(), section_of(README)
    if actual != expected:
        diff = [f"- {a}\n+ {e}" for a, e in zip(actual.splitlines(), expected.splitlines(), strict=False) if a != e]
        pytest.fail(
            "README's settings section differs from `python -m shared.settings_doc` "
            f"(run it with --write); first difference:\n{diff[0] if diff else 'length'}"
        )


@pytest.mark.parametrize("ref", [ref for _, ref in TABLES])
def test_every_setting_has_a_description(ref: str) -> None:
    for var in variables(settings_class(ref)):
        assert var.description.strip(), f"{var.env} has no description"


def test_the_doc_tool_imports_no_service() -> None:
    """It finds the settings classes by module name when rendering, not at import."""
    code = (
        "import sys, shared.settings_doc; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gateway','ingestion','chat','embedding','llm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_two_commands_are_shown() -> None:
    assert "make up" in README and "make test" in README
