"""The README's settings section, generated from the settings classes' fields and descriptions.

    python -m shared.settings_doc            print the section (what goes under "## Settings")
    python -m shared.settings_doc --write    replace that section of README.md with it

The classes are found by module name (importlib, when rendering), so this tool imports no service.
A test (tests/unit/test_readme.py) checks the README holds exactly this text.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

# (title, "module:Class"), in README order. A table lists the variables its class declares; those it
# inherits from, or nests, another class listed here are in that class's table.
TABLES: list[tuple[str, str]] = [
    ("gateway", "gateway.settings:Settings"),
    ("api (HTTP API + web chat)", "api.settings:Settings"),
    ("ingestion + chat", "shared.settings:RagSettings"),
    ("documents (ingestion + gateway)", "shared.settings:DocumentsSettings"),
    ("ingestion", "ingestion.settings:Settings"),
    ("chat", "chat.settings:Settings"),
    ("authorizer", "authorizer.settings:Settings"),
    ("embedding", "embedding.settings:Settings"),
    ("llm", "llm.settings:Settings"),
    ("kinesis event source (local)", "shared.event_source:EventSourceSettings"),
]

INTRO = """\
One pydantic-settings object per service, built once at start and passed down whole; the tables below are
generated from the code (`python -m shared.settings_doc`) and a test checks that this section is exactly
that output. The `RAG_*` variables are read by the two lambdas, and those of the documents store also by
the gateway, so one environment configures them all (one definition for each value two processes need).
"""

HEADING = "## Settings"


@dataclass(frozen=True)
class Variable:
    env: str
    default: str  # as shown: empty for None
    description: str
    declared_by: type[BaseSettings]  # the class whose table lists it


def settings_class(ref: str) -> type[BaseSettings]:
    """``module:Class`` -> the class (imported now, not when this module is)."""
    module, _, name = ref.partition(":")
    cls = getattr(importlib.import_module(module), name or "Settings")
    if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
        raise TypeError(f"{ref} is not a pydantic-settings class")
    return cls


def _shown_default(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None:
        return ""
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, dict | list):
        return f"`{json.dumps(default)}`"
    return f"`{default}`"


def _nested(field: FieldInfo) -> type[BaseSettings] | None:
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseSettings) else None


def _declaring(cls: type[BaseSettings], name: str) -> type[BaseSettings]:
    """The first class up the MRO that has the field and none of whose bases has it."""
    owner = cls
    for base in cls.__mro__[1:]:
        if isinstance(base, type) and issubclass(base, BaseSettings) and name in base.model_fields:
            owner = base
    return owner


def variables(cls: type[BaseSettings]) -> list[Variable]:
    """Every environment variable ``cls`` reads: its fields, inherited ones, and those of nested settings
    (a nested settings object reads its own variables)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    out: list[Variable] = []
    for name, field in cls.model_fields.items():
        nested = _nested(field)
        if nested is not None:
            out.extend(variables(nested))
            continue
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else (prefix + name).upper()
        out.append(Variable(env, _shown_default(field), field.description or "", _declaring(cls, name)))
    return out


def _table(title: str, cls: type[BaseSettings], titles: dict[type[BaseSettings], str]) -> str:
    """The variables ``cls`` declares; then the tables of those it inherits or nests."""
    own = [v for v in variables(cls) if v.declared_by is cls or v.declared_by not in titles]
    order = list(titles)
    others = sorted({v.declared_by for v in variables(cls) if v not in own}, key=order.index)
    lines = [f"#### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
    for var in own:
        lines.append(f"| `{var.env}` | {var.default} | {var.description.replace('|', chr(92) + '|')} |")
    if others:
        lines += ["", "Also reads the variables of " + " and ".join(f"*{titles[o]}*" for o in others) + "."]
    return "\n".join(lines) + "\n"


def render() -> str:
    """The section's body: everything under "## Settings" up to the next "## " heading."""
    classes = [(title, settings_class(ref)) for title, ref in TABLES]
    titles = {cls: title for title, cls in classes}
    return INTRO + "\n" + "\n".join(_table(title, cls, titles) for title, cls in classes) + "\n"


def _bounds(readme: str) -> tuple[int, int]:
    """Where the settings section's body starts and ends (the next "## " heading, or the end)."""
    start = readme.index(f"\n{HEADING}\n\n") + len(HEADING) + 3
    end = readme.find("\n## ", start)
    return start, end + 1 if end != -1 else len(readme)


def section_of(readme: str) -> str:
    """The body of the README's settings section (what render() must equal)."""
    start, end = _bounds(readme)
    return readme[start:end]


def write(readme_path: Path) -> bool:
    """Replace the README's settings section with render(); True if it changed."""
    text = readme_path.read_text(encoding="utf-8")
    start, end = _bounds(text)
    new_text = text[:start] + render() + text[end:]
    readme_path.write_text(new_text, encoding="utf-8")
    return new_text != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.settings_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the settings section of README.md")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="with --write (default: %(default)s)")
    args: Any = parser.parse_args(argv)
    if args.write:
        print(f"{args.readme}: {'updated' if write(args.readme) else 'already up to date'}")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
