"""Settings of the HTTP API function (env prefix API_).

The chat, ingestion and authorizer logic it runs as libraries read their own settings (chat.settings,
ingestion.settings, authorizer.settings: the RAG_* and RAG_AUTH_* variables), as the functions do.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.settings import comma_list
from shared.web_origins import normalize_origin


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="API_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address (Lambda Web Adapter: 0.0.0.0 in the image).")
    port: int = Field(
        8004,
        description="Port of the HTTP API and the web chat (0: any free port; Lambda Web Adapter forwards to "
        "AWS_LWA_PORT, which the image sets to the same value).",
    )
    stage: str = Field("local", description="The WebSocket API's stage: the web chat connects to /{stage}.")
    websocket_url: str | None = Field(
        None,
        description="The WebSocket API the web chat connects to (wss://ID.execute-api.REGION.amazonaws.com/STAGE "
        "on AWS). Unset: the page's own origin and /{API_STAGE}, i.e. the gateway that forwarded the page.",
    )
    uploads_url: str | None = Field(
        None,
        description="For a local documents folder: the gateway's public URL with its stage "
        "(http://HOST:PORT/local), which receives the presigned PUTs in place of S3. Unused with S3.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values answered besides 127.0.0.1, localhost and [::1] (any port), "
        "comma-separated; anything else gets 421 (DNS rebinding). '*' answers any Host (a Lambda Function "
        "URL, whose hostname AWS routes by).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) allowed to call /v1 besides the page's own, "
        "comma-separated. Requests without Origin (CLI, SDKs) pass; another Origin gets 403.",
    )
    web_chat_gateways: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other gateways (ws:// or wss:// origins) the web chat's ?ws= may connect to, "
        "comma-separated; it sends them its key.",
    )
    http_max_body_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest request body of the HTTP API under /v1 (larger: 413)."
    )
    max_concurrent_requests: int = Field(
        8,
        ge=1,
        description="Worker threads: answers being generated, ingestion calls and credential checks running at "
        "once; more wait their turn.",
    )
    sync_function: str | None = Field(
        None,
        description="The ingestion function that runs /v1/kb/sync jobs (its name or ARN), invoked "
        "asynchronously (InvocationType=Event); it records their progress in the documents store. Unset: the "
        "jobs run in this process (their state is in the documents store either way).",
    )
    lambda_endpoint_url: str | None = Field(
        None,
        description="The Lambda Invoke API API_SYNC_FUNCTION is reached at (a local runtime, http://HOST:PORT, "
        "signed with the stack's internal key). Unset: AWS Lambda.",
    )
    sync_stale_after_s: float = Field(
        960.0,
        gt=0,
        description="A sync job not updated for this long (its worker died: a killed process, a run past the "
        "function's timeout) is shown failed ('interrupted') and its uploads may be synced again. Longer "
        "than the ingestion function's timeout: the worker updates the job after every document.",
    )
    credential_cache_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long an API key's check is reused (a valid key's principal, a revoked key's 403; "
        "never an unknown key's 401), as API Gateway caches an authorizer's answer: a key revoked meanwhile "
        "still passes for at most this long. 0 = check the key store on every request. Tokens are not cached.",
    )
    credential_cache_size: int = Field(
        10_000, ge=1, description="Most API keys' checks kept (least recently used ones go first)."
    )
    log_level: str = Field("INFO", description="Log level.")

    @field_validator("allowed_hosts", "allowed_origins", "web_chat_gateways", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [normalize_origin(origin) for origin in value]

    @field_validator("web_chat_gateways")
    @classmethod
    def _gateways(cls, value: list[str]) -> list[str]:
        return [normalize_origin(origin, ("ws", "wss")) for origin in value]

    @field_validator("websocket_url")
    @classmethod
    def _websocket_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError(f"{value!r} is not a WebSocket URL (ws:// or wss://)")
        return value
