"""Print every setting of every service as Markdown tables (the README's settings section).

python -m shared.settings_doc
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from pydantic_settings import BaseSettings

SERVICES: list[tuple[str, str]] = [
    ("gateway", "gateway.settings"),
    ("ingestion + chat (shared)", "shared.settings"),
    ("ingestion", "ingestion.settings"),
    ("chat", "chat.settings"),
    ("embedding", "embedding.settings"),
    ("llm", "llm.settings"),
]


def env_vars(cls: type[BaseSettings], *, inherited: bool = True) -> Iterator[tuple[str, str, str]]:
    """(ENV_NAME, default, description) for each field."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    own = set(cls.__annotations__) if not inherited else None
    for name, field in cls.model_fields.items():
        if own is not None and name not in own:
            continue
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else (prefix + name).upper()
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{default}`"
        yield env, shown, field.description or ""


def settings_class(module: str) -> type[BaseSettings]:
    mod = importlib.import_module(module)
    cls = getattr(mod, "Settings", None) or mod.RagSettings
    assert isinstance(cls, type) and issubclass(cls, BaseSettings)
    return cls


def render() -> str:
    out = []
    for title, module in SERVICES:
        cls = settings_class(module)
        out.append(f"#### {title}\n\n| variable | default | meaning |\n|---|---|---|")
        inherited = module not in ("ingestion.settings", "chat.settings")
        for env, default, desc in env_vars(cls, inherited=inherited):
            desc = desc.replace("|", "\\|")
            out.append(f"| `{env}` | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
