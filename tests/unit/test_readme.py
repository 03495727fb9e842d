"""The README is the manual: it must list every setting and the two commands."""

from __future__ import annotations

import pytest

from shared.settings_doc import SERVICES, env_vars, settings_class
from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("module", [m for _, m in SERVICES])
def test_every_setting_is_documented(module: str) -> None:
    missing = [env for env, _, _ in env_vars(settings_class(module)) if f"`{env}`" not in README]
    assert not missing, f"README lacks {missing}: run python -m shared.settings_doc"


def test_every_setting_has_a_description() -> None:
    for _, module in SERVICES:
        for env, _, desc in env_vars(settings_class(module)):
            assert desc.strip(), f"{env} has no description"


def test_the_two_commands_are_shown() -> None:
    assert "make up" in README and "make test" in README
