"""The two configuration profiles: ``local`` (the default) and ``aws``.

Going to AWS is a change of configuration, never of code, and this module is that configuration in one
place. A profile is a set of environment variables for the two lambdas (the ``RAG_*`` settings of
shared/settings.py, chat/settings.py and ingestion/settings.py). Switching profiles changes only:

- the endpoints: set to the local stand-ins, or **unset** (= AWS itself: Bedrock Runtime, S3, and the
  API Gateway Management API at ``https://{domainName}/{stage}`` taken from each event);
- the model ids (and the embedding body format / dimension that go with the embedding model);
- where data lives: a local folder (or MinIO), or ``s3://{bucket}/...``.

Print a profile as ``.env`` lines, or check the current environment::

    python -m shared.profiles local
    python -m shared.profiles aws --bucket my-rag-bucket --region eu-west-1 [--embedding titan-512]
    python -m shared.profiles check          # the current RAG_* environment: consistent? which mode?

On AWS the SAM template (template.yaml) sets the same variables on the functions; tests/unit/test_template.py
checks that the template's environment is an ``aws`` profile that passes :func:`check`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Variables that point a lambda at a local stand-in. Unset (or empty) = the AWS service itself.
ENDPOINT_VARS = (
    "RAG_EMBEDDING_ENDPOINT_URL",
    "RAG_LLM_ENDPOINT_URL",
    "RAG_S3_ENDPOINT_URL",
    "RAG_CONNECTIONS_ENDPOINT_URL",
)

# `check` reads the chat lambda's settings: the shared RAG_* ones plus the LLM's.
CHECKED_SETTINGS = "chat.settings"

LOCAL_EMBEDDING_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_LLM_MODEL_ID = "local-llm"


@dataclass(frozen=True)
class EmbeddingModel:
    """What the lambdas must know about an InvokeModel embedding model."""

    model_id: str
    body_format: str  # "titan" (one inputText per call) or "cohere" (batches of texts)
    dimensions: tuple[int, ...]  # sizes the model can return; the first is its default
    max_batch: int = 1  # texts per call


# Bedrock embedding models whose InvokeModel bodies shared/bedrock.py speaks (and the local one).
EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    m.model_id: m
    for m in (
        # Titan Text Embeddings V2: {"inputText", "dimensions": 256 | 512 | 1024, "normalize"}.
        EmbeddingModel("amazon.titan-embed-text-v2:0", "titan", (1024, 512, 256)),
        # Cohere Embed v3: {"texts": [...] (<= 96), "input_type"}; 1024 floats per text.
        EmbeddingModel("cohere.embed-english-v3", "cohere", (1024,), max_batch=96),
        EmbeddingModel("cohere.embed-multilingual-v3", "cohere", (1024,), max_batch=96),
        # The local embedding service (all-MiniLM-L6-v2) answers both body formats.
        EmbeddingModel(LOCAL_EMBEDDING_MODEL_ID, "cohere", (384,), max_batch=96),
    )
}

# Short names for --embedding: model id, format, dimension.
EMBEDDING_CHOICES: dict[str, tuple[str, str, int]] = {
    "titan-1024": ("amazon.titan-embed-text-v2:0", "titan", 1024),
    "titan-512": ("amazon.titan-embed-text-v2:0", "titan", 512),
    "titan-256": ("amazon.titan-embed-text-v2:0", "titan", 256),
    "cohere-en": ("cohere.embed-english-v3", "cohere", 1024),
    "cohere-multi": ("cohere.embed-multilingual-v3", "cohere", 1024),
}

# The default answer model on AWS: on-demand, Converse/ConverseStream-capable, cheap. Any Converse-capable
# foundation-model id works (e.g. anthropic.claude-3-haiku-20240307-v1:0, meta.llama3-1-8b-instruct-v1:0).
DEFAULT_AWS_LLM_MODEL_ID = "amazon.nova-micro-v1:0"


def local_profile(
    *,
    host: str = "127.0.0.1",
    gateway_port: int = 8000,
    embedding_port: int = 8001,
    llm_port: int = 8002,
    stage: str = "local",
    data_dir: str = "data",
) -> dict[str, str]:
    """The local stack (what ``make up`` / shared/stack.py wires): stand-ins on localhost, data in a folder."""
    return {
        "RAG_AWS_REGION": "us-east-1",
        "RAG_LANCEDB_URI": f"{data_dir}/lancedb",
        "RAG_DOCUMENTS_URI": f"{data_dir}/documents",
        "RAG_EMBEDDING_ENDPOINT_URL": f"http://{host}:{embedding_port}",
        "RAG_EMBEDDING_MODEL_ID": LOCAL_EMBEDDING_MODEL_ID,
        "RAG_EMBEDDING_FORMAT": "cohere",
        "RAG_EMBEDDING_DIMENSION": "384",
        "RAG_LLM_ENDPOINT_URL": f"http://{host}:{llm_port}",
        "RAG_LLM_MODEL_ID": LOCAL_LLM_MODEL_ID,
        "RAG_CONNECTIONS_ENDPOINT_URL": f"http://{host}:{gateway_port}/{stage}",
    }


def aws_profile(
    *,
    bucket: str,
    region: str,
    embedding: str = "titan-1024",
    llm_model_id: str = DEFAULT_AWS_LLM_MODEL_ID,
    lancedb_prefix: str = "lancedb",
    documents_prefix: str = "documents",
) -> dict[str, str]:
    """AWS: no endpoint variables (they must be unset), Bedrock model ids, data in ``s3://{bucket}/``.

    Replies go through the API Gateway Management API at ``https://{domainName}/{stage}``, which
    shared/connections.py derives from each event; nothing to configure.
    """
    model_id, body_format, dimension = EMBEDDING_CHOICES[embedding]
    return {
        "RAG_AWS_REGION": region,
        "RAG_LANCEDB_URI": f"s3://{bucket}/{lancedb_prefix}",
        "RAG_DOCUMENTS_URI": f"s3://{bucket}/{documents_prefix}",
        "RAG_EMBEDDING_MODEL_ID": model_id,
        "RAG_EMBEDDING_FORMAT": body_format,
        "RAG_EMBEDDING_DIMENSION": str(dimension),
        "RAG_LLM_MODEL_ID": llm_model_id,
        # One WebSocket message per token costs one API Gateway message each; coalescing tokens for
        # 100 ms sends ~10 messages a second instead (see docs_aws.md, cost).
        "RAG_TOKEN_FLUSH_MS": "100",
    }


def to_dotenv(env: Mapping[str, str], *, unset: tuple[str, ...] = ()) -> str:
    lines = [f"{k}={v}" for k, v in env.items()]
    lines += [f"# {k} unset: the AWS service itself" for k in unset]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- checks


def mode_of(settings: Any) -> str:
    """'local', 'aws' or 'mixed' (some services local, some AWS) from the endpoint settings."""
    fields = ["embedding_endpoint_url", "connections_endpoint_url"]
    if hasattr(settings, "llm_endpoint_url"):
        fields.append("llm_endpoint_url")
    # documents_uri only where the settings have it (the chat lambda's do not: it reads no documents).
    uses_s3 = any(str(getattr(settings, f, "")).startswith("s3://") for f in ("lancedb_uri", "documents_uri"))
    if uses_s3:
        fields.append("s3_endpoint_url")
    local = [bool(getattr(settings, f)) for f in fields]
    if all(local):
        return "local"
    if not any(local):
        return "aws"
    return "mixed"


def check(settings: Any) -> list[str]:
    """Problems in a lambda's settings that would only show at the first call (empty = consistent).

    ``settings`` is a RagSettings (or the chat/ingestion Settings built on it)."""
    problems: list[str] = []
    mode = mode_of(settings)
    model = EMBEDDING_MODELS.get(settings.embedding_model_id)
    on_aws_embeddings = not settings.embedding_endpoint_url
    if on_aws_embeddings and settings.embedding_model_id == LOCAL_EMBEDDING_MODEL_ID:
        problems.append(
            f"RAG_EMBEDDING_MODEL_ID={settings.embedding_model_id} is the local model, but "
            "RAG_EMBEDDING_ENDPOINT_URL is unset (= Bedrock): use e.g. amazon.titan-embed-text-v2:0"
        )
    elif model is not None and on_aws_embeddings:
        if settings.embedding_format != model.body_format:
            problems.append(
                f"{model.model_id} takes '{model.body_format}' bodies, not RAG_EMBEDDING_FORMAT="
                f"{settings.embedding_format}"
            )
        if settings.embedding_dimension not in model.dimensions:
            sizes = ", ".join(str(d) for d in sorted(model.dimensions))
            problems.append(
                f"{model.model_id} returns vectors of {sizes} floats, not RAG_EMBEDDING_DIMENSION="
                f"{settings.embedding_dimension}"
            )
        if settings.embedding_format == "cohere" and settings.embedding_batch_size > model.max_batch:
            problems.append(f"{model.model_id} takes at most {model.max_batch} texts per call")
    if hasattr(settings, "llm_model_id") and not settings.llm_endpoint_url and settings.llm_model_id == "local-llm":
        problems.append("RAG_LLM_MODEL_ID=local-llm, but RAG_LLM_ENDPOINT_URL is unset (= Bedrock): set a model id")
    if mode == "aws":
        for name in ("lancedb_uri", "documents_uri"):
            if not hasattr(settings, name):
                continue
            value = str(getattr(settings, name))
            if not value.startswith("s3://"):
                problems.append(
                    f"RAG_{name.upper()}={value} is a local folder; on Lambda only /tmp is writable and it is "
                    "not shared: use s3://bucket/prefix"
                )
    return problems


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.profiles", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="profile", required=True)
    sub.add_parser("local", help="print the local profile as .env lines")
    aws = sub.add_parser("aws", help="print an AWS profile as .env lines")
    aws.add_argument("--bucket", required=True)
    aws.add_argument("--region", required=True)
    aws.add_argument("--embedding", choices=sorted(EMBEDDING_CHOICES), default="titan-1024")
    aws.add_argument("--llm-model-id", default=DEFAULT_AWS_LLM_MODEL_ID)
    aws.add_argument("--lancedb-prefix", default="lancedb")
    sub.add_parser("check", help="check the RAG_* settings of this environment")
    args = parser.parse_args(argv)
    if args.profile == "local":
        sys.stdout.write(to_dotenv(local_profile()))
        return 0
    if args.profile == "aws":
        env = aws_profile(
            bucket=args.bucket,
            region=args.region,
            embedding=args.embedding,
            llm_model_id=args.llm_model_id,
            lancedb_prefix=args.lancedb_prefix,
        )
        sys.stdout.write(to_dotenv(env, unset=ENDPOINT_VARS))
        return 0
    # By module name: this dev tool imports no service package (tests/unit/test_layout.py).
    settings = importlib.import_module(CHECKED_SETTINGS).Settings()
    problems = check(settings)
    print(f"mode: {mode_of(settings)}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main())
