"""Gateway settings (env prefix GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.protocol import MAX_MESSAGE_BYTES, route_table
from shared.settings import DocumentsSettings

DEFAULT_FUNCTIONS = {
    "ingestion": "http://127.0.0.1:9001/2015-03-31/functions/ingestion/invocations",
    "chat": "http://127.0.0.1:9002/2015-03-31/functions/chat/invocations",
}
# Route key -> function, from the protocol's action registry (template.yaml has the same routes).
DEFAULT_ROUTES: dict[str, str] = dict(route_table())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, description="Port for the WebSocket API, the @connections API and /health.")
    stage: str = Field("local", description="Stage name: the WebSocket URL is ws://host:port/{stage}.")
    api_id: str = Field("local", description="apiId put in events' requestContext.")
    domain_name: str | None = Field(
        None,
        description="domainName put in events (what lambdas use to reach @connections); unset = host:port.",
    )
    functions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_FUNCTIONS),
        description="Function name -> Lambda Invoke URL (POST .../2015-03-31/functions/{name}/invocations), as JSON.",
    )
    routes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ROUTES),
        description="Route key -> function name, as JSON. The route key is the body's 'action' "
        "(route selection expression $request.body.action); unmatched messages take $default.",
    )
    function_concurrency: dict[str, int] = Field(
        default_factory=dict,
        description="Function name -> most invocations in flight at once, as JSON; more wait their turn "
        "(within the integration timeout). Unset = no limit. Compose sets 1: the Lambda base image's "
        "emulator serves one invocation at a time.",
    )
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1, description="Largest client message (API Gateway: 128 KB).")
    hard_max_message_bytes: int = Field(
        4 * MAX_MESSAGE_BYTES,
        ge=1,
        description="Frames above this are refused by the WebSocket layer (close 1009); between the two limits "
        "the client gets a message_too_large error and stays connected.",
    )
    idle_timeout_s: float = Field(600.0, gt=0, description="Close a connection idle this long (API Gateway: 10 min).")
    integration_timeout_s: float = Field(
        300.0, gt=0, description="Wait this long for a lambda invocation (API Gateway's own cap is 29 s)."
    )
    max_inflight_per_connection: int = Field(
        4, ge=1, description="Invocations in flight per connection; more get a 'throttled' error."
    )
    log_level: str = Field("INFO", description="Log level.")
    http_max_body_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Largest request body of the OpenAI-compatible HTTP API under /v1 (larger: 413).",
    )
    # -- the local stand-in for presigned S3 PUTs (documents in a local folder)
    documents: DocumentsSettings = Field(
        default_factory=DocumentsSettings,
        description="The documents store and its uploads, read from the RAG_* variables the ingestion lambda "
        "reads (one definition for both): PUT /{stage}/uploads/... writes into RAG_DOCUMENTS_URI's uploads/ "
        "when it is a local folder, checks RAG_UPLOAD_SECRET and refuses bodies over RAG_MAX_UPLOAD_BYTES.",
    )

    def public_domain(self) -> str:
        return self.domain_name or f"{self.host}:{self.port}"
