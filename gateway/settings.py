"""Gateway settings (env prefix GATEWAY_), and the rules they make: allowed Host names and Origins."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.protocol import MAX_MESSAGE_BYTES, route_table, two_way_routes
from shared.settings import AuthSettings, DocumentsSettings, InternalAuthSettings, comma_list
from shared.web_origins import LOOPBACK_NAMES, normalize_origin, split_host

# API Gateway's WebSocket frame size quota (a message may span several frames, up to 128 KB in all).
MAX_FRAME_BYTES = 32 * 1024

DEFAULT_FUNCTIONS = {
    "ingestion": "http://127.0.0.1:9001/2015-03-31/functions/ingestion/invocations",
    "chat": "http://127.0.0.1:9002/2015-03-31/functions/chat/invocations",
    "authorizer": "http://127.0.0.1:9003/2015-03-31/functions/authorizer/invocations",
}
# Route key -> function, from the protocol's action registry (template.yaml has the same routes). No
# $connect/$disconnect: a connect is the authorizer's answer alone (template.yaml: a MOCK integration).
DEFAULT_ROUTES: dict[str, str] = dict(route_table())
AUTHORIZER_FUNCTION = "authorizer"
# Where a REQUEST authorizer's identity sources may come from (API Gateway's mapping expressions).
DEFAULT_IDENTITY_SOURCES = [
    "route.request.header.Authorization",
    "route.request.querystring.token",
    "route.request.header.Sec-WebSocket-Protocol",
]
_IDENTITY_SOURCE = re.compile(r"^(?:route\.request|\$request)\.(header|querystring)\.([A-Za-z0-9_.-]+)$")


def identity_source(expression: str) -> tuple[Literal["header", "querystring"], str]:
    """``route.request.header.Authorization`` -> ("header", "Authorization"); ValueError if not one."""
    m = _IDENTITY_SOURCE.match(expression.strip())
    if m is None:
        raise ValueError(
            f"{expression!r} is not an identity source: use route.request.header.NAME or route.request.querystring.NAME"
        )
    kind: Literal["header", "querystring"] = "header" if m[1] == "header" else "querystring"
    return kind, m[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, description="Port of the public listener: the WebSocket API, /v1, the web chat, /health.")
    management_host: str = Field(
        "127.0.0.1",
        description="Bind address of the internal listener that serves the @connections Management API "
        "(SigV4-signed requests only). Keep it off the public network.",
    )
    management_port: int = Field(
        8003,
        description="Port of the internal @connections listener (0: any free port). Not served on the public port.",
    )
    stage: str = Field("local", description="Stage name: the WebSocket URL is ws://host:port/{stage}.")
    api_id: str = Field("local", description="apiId put in events' requestContext.")
    domain_name: str | None = Field(
        None,
        description="domainName put in events (what lambdas use to reach @connections); unset = host:port.",
    )
    functions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_FUNCTIONS),
        description="Function name -> Lambda Invoke URL (POST .../2015-03-31/functions/{name}/invocations), as JSON. "
        "'authorizer' is the REQUEST authorizer of $connect and /v1.",
    )
    routes: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ROUTES),
        description="Route key -> function name, as JSON. The route key is the body's 'action' "
        "(route selection expression $request.body.action); unmatched messages take $default. $connect and "
        "$disconnect invoke a function only if routed here (by default neither is: a connect needs only "
        "the authorizer).",
    )
    two_way_routes: list[str] = Field(
        default_factory=lambda: sorted(two_way_routes()),
        description="Route keys whose function's response body goes back to the client (API Gateway's two-way "
        "routes: a route response; template.yaml declares the same ones), as a JSON list. On other routes the "
        "body is dropped, as API Gateway drops it: the function replies through @connections.",
    )
    function_concurrency: dict[str, int] = Field(
        default_factory=dict,
        description="Function name -> most invocations in flight at once, as JSON; more wait their turn "
        "(within the integration timeout). Unset = no limit. Compose sets 1: the Lambda base image's "
        "emulator serves one invocation at a time.",
    )
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES,
        ge=1,
        description="Largest message, in either direction (API Gateway: 128 KB): a client message over it "
        "gets a message_too_large error if it is under GATEWAY_HARD_MAX_MESSAGE_BYTES; an @connections POST "
        "over it gets 413 PayloadTooLargeException.",
    )
    hard_max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES,
        ge=1,
        description="Client messages above this (all their frames together) close the connection with 1009, as "
        "API Gateway does above 128 KB. Raise it above GATEWAY_MAX_MESSAGE_BYTES to answer messages between the "
        "two with a message_too_large error instead, the connection staying open.",
    )
    max_frame_bytes: int = Field(
        MAX_FRAME_BYTES,
        ge=125,
        description="Largest WebSocket frame a client may send (API Gateway: 32 KB; a larger message must be "
        "sent in several frames): a larger one closes the connection with 1009. The gateway negotiates no "
        "compression (API Gateway does not), so this is the frame's size as sent.",
    )
    idle_timeout_s: float = Field(600.0, gt=0, description="Close a connection idle this long (API Gateway: 10 min).")
    max_connection_s: float = Field(
        7200.0,
        gt=0,
        description="Close a connection this long after it opened, however busy (API Gateway: 2 hours), with "
        "1001 'Going away'; $disconnect runs as usual.",
    )
    integration_timeout_s: float = Field(
        29.0,
        gt=0,
        description="How long a message waits for its route's function (API Gateway: 29 s, TimeoutInMillis in "
        'template.yaml). Then the client gets API Gateway\'s {"message": "Endpoint request timed out"} while '
        "the function runs on: its later @connections posts still arrive, its return value is dropped.",
    )
    throttling_rate_limit: float = Field(
        10_000.0,
        gt=0,
        description="Messages per second the stage accepts, all connections together (API Gateway's "
        "account-level default, 10,000; template.yaml's stage sets ThrottlingRateLimit 20, which "
        "GATEWAY_THROTTLING_RATE_LIMIT=20 reproduces). A message over it gets API Gateway's "
        '{"message": "Too Many Requests"} and invokes nothing; the connection stays open.',
    )
    throttling_burst_limit: int = Field(
        5_000,
        ge=1,
        description="Messages the stage accepts in a burst (API Gateway's account-level default, 5,000; "
        "template.yaml's ThrottlingBurstLimit is 50).",
    )
    connect_rate_limit: float = Field(
        500.0,
        gt=0,
        description="New connections per second (and in a burst) the gateway accepts (API Gateway: 500 per "
        "account and region); more are refused with 429 before the authorizer runs.",
    )
    management_rate_limit: float = Field(
        10_000.0,
        gt=0,
        description="@connections calls per second (and in a burst) the internal listener accepts (API "
        "Gateway's account-level throttle: 10,000 per second); more get 429 LimitExceededException.",
    )
    max_inflight_per_connection: int = Field(
        4,
        ge=1,
        description="Invocations in flight per connection; more get a 'throttled' protocol error (a local guard, "
        "not an API Gateway quota; a function refusing with 429 gives the same error).",
    )
    log_level: str = Field("INFO", description="Log level.")
    region: str = Field(
        "us-east-1",
        description="Region in ARNs (the authorizer's methodArn) and in the SigV4 scope of the gateway's Invoke calls.",
    )
    # -- identity ($connect and /v1 authorization)
    authorizer_identity_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_IDENTITY_SOURCES),
        description="Where the credential may be, comma-separated mapping expressions "
        "(route.request.header.NAME, route.request.querystring.NAME). A request with none of them is refused "
        "(401) without invoking the authorizer; their values are the authorizer cache's key.",
    )
    authorizer_ttl_s: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="How long the authorizer's answer (Allow or Deny) is reused for the same identity source "
        "values (API Gateway: 300 s by default, at most 3600). 0 = invoke the authorizer every time.",
    )
    authorizer_cache_size: int = Field(
        10_000, ge=1, description="Most authorizer answers kept (least recently used ones go first)."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values the gateway answers, comma-separated NAME or NAME:PORT (a NAME alone "
        "accepts any port the gateway listens on); anything else gets 421 (DNS rebinding). Always allowed: "
        "127.0.0.1, localhost, [::1], GATEWAY_DOMAIN_NAME and GATEWAY_HOST (unless a wildcard address).",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) allowed to open the WebSocket (/v1's are "
        "API_ALLOWED_ORIGINS), comma-separated, besides the gateway's own (http(s)://{an allowed host}). "
        "Requests without Origin (CLI, SDKs) pass; another Origin gets 403.",
    )
    api_url: str = Field(
        "http://127.0.0.1:8004",
        description="The HTTP API function (python -m api): /v1, /openapi.json and the web chat under /ui are "
        "forwarded to it as API Gateway proxies (streamed, the client's headers intact).",
    )
    # -- the local stand-in for presigned S3 PUTs (documents in a local folder)
    documents: DocumentsSettings = Field(
        default_factory=DocumentsSettings,
        description="The documents store and its uploads, read from the RAG_* variables the ingestion lambda "
        "reads (one definition for both): PUT /{stage}/uploads/... writes into RAG_DOCUMENTS_URI's uploads/ "
        "when it is a local folder, checks RAG_UPLOAD_SECRET and refuses bodies over RAG_MAX_UPLOAD_BYTES.",
    )

    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="RAG_AUTH, as the authorizer and the CLI read it: 'none' switches identity off.",
    )
    internal: InternalAuthSettings = Field(
        default_factory=InternalAuthSettings,
        description="The stack's internal SigV4 key: the gateway signs its Invoke calls with it, and "
        "@connections accepts only requests signed with it.",
    )

    @field_validator("authorizer_identity_sources", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("authorizer_identity_sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one identity source")
        for expression in value:
            identity_source(expression)
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if split_host(host) is None:
                raise ValueError(f"{host!r} is not a host name, an address or NAME:PORT")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [normalize_origin(origin) for origin in value]

    def public_domain(self) -> str:
        return self.domain_name or f"{self.host}:{self.port}"

    def host_names(self) -> list[tuple[str, int | None]]:
        """(name, port or None = any port the gateway listens on) of every Host the gateway answers."""
        hosts = [*LOOPBACK_NAMES, *self.allowed_hosts]
        if self.domain_name:
            hosts.append(self.domain_name)
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.append(f"[{self.host}]" if ":" in self.host else self.host)
        out: list[tuple[str, int | None]] = []
        for host in hosts:
            parsed = split_host(host)
            if parsed is not None and parsed not in out:
                out.append(parsed)
        return out
