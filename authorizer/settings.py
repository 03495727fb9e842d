"""Authorizer settings: which credentials are accepted, the OIDC issuer (Cognito) and its JWKS, the key store.

``RAG_AUTH`` (shared/settings.py's AuthSettings) is read by the gateway and the CLI too (``none`` switches
identity off); the ``RAG_AUTH_*`` variables are this function's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.identity import TENANT_RE
from shared.settings import AuthSettings, DocumentsSettings, comma_list

AudienceClaim = Literal["aud", "client_id"]
MAX_LEEWAY_S = 300.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_AUTH_", extra="ignore", populate_by_name=True)

    # -- local runtime (ignored on AWS, where Lambda hosts the handler)
    host: str = Field("127.0.0.1", validation_alias="AUTHORIZER_HOST", description="Local runtime bind address.")
    port: int = Field(9003, validation_alias="AUTHORIZER_PORT", description="Local runtime port (Invoke API).")
    function_name: str = Field("authorizer", validation_alias="AUTHORIZER_FUNCTION_NAME", description="Function name.")
    timeout_s: float = Field(
        10.0, gt=0, validation_alias="AUTHORIZER_TIMEOUT_S", description="Invocation timeout, as Lambda's Timeout."
    )
    max_concurrency: int = Field(
        8,
        ge=1,
        validation_alias="AUTHORIZER_MAX_CONCURRENCY",
        description="Concurrent invocations (reserved concurrency).",
    )
    log_level: str = Field("INFO", validation_alias="AUTHORIZER_LOG_LEVEL", description="Log level.")
    aws_region: str = Field("us-east-1", validation_alias="RAG_AWS_REGION", description="AWS region for every client.")
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias="RAG_S3_ENDPOINT_URL",
        description="S3-compatible endpoint of the key store when RAG_DOCUMENTS_URI is s3:// (MinIO, moto); "
        "unset = AWS S3.",
    )

    # -- which credentials (RAG_AUTH, read by the gateway and the CLI too)
    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="RAG_AUTH: the credentials accepted ('api_key', 'jwt'), or 'none': every caller is allowed "
        "as the anonymous principal of the default tenant.",
    )

    # -- OIDC (Amazon Cognito user pools on AWS)
    jwt_issuer: str | None = Field(
        None,
        description="The OIDC issuer tokens must name in 'iss', e.g. "
        "https://cognito-idp.{region}.amazonaws.com/{user pool id}. Unset = JWTs are refused.",
    )
    jwt_audience: Annotated[list[str], NoDecode] = Field(
        [],
        description="Accepted audiences, comma-separated: the Cognito app client ids. A token passes if one "
        "of its RAG_AUTH_JWT_AUDIENCE_CLAIMS names one of them. Required with RAG_AUTH_JWT_ISSUER.",
    )
    jwt_audience_claims: Annotated[list[AudienceClaim], NoDecode] = Field(
        ["aud", "client_id"],
        description="Claims that carry the audience, comma-separated: Cognito id tokens carry 'aud', access "
        "tokens 'client_id'.",
    )
    jwt_jwks_url: str | None = Field(
        None,
        description="The issuer's JSON Web Key Set; unset = {RAG_AUTH_JWT_ISSUER}/.well-known/jwks.json (Cognito's). "
        "https only (http on a loopback address, for tests).",
    )
    jwt_token_use: Annotated[list[str], NoDecode] = Field(
        ["id", "access"],
        description="Accepted values of the 'token_use' claim (Cognito: 'id' or 'access'), checked when a token "
        "carries it.",
    )
    jwt_leeway_s: float = Field(
        60.0,
        ge=0,
        le=MAX_LEEWAY_S,
        description="Clock skew allowed on 'exp', 'nbf' and 'iat' (seconds, at most 300).",
    )
    jwt_tenant_claim: str = Field(
        "custom:tenant",
        min_length=1,
        description="The claim naming the user's tenant (a Cognito custom attribute).",
    )
    jwt_default_tenant: str | None = Field(
        None,
        description="Tenant of a token without RAG_AUTH_JWT_TENANT_CLAIM; unset = such a token is refused (403).",
    )
    jwks_cache_s: float = Field(
        3600.0, gt=0, description="How long a fetched JWKS is used before it is fetched again (seconds)."
    )
    jwks_min_refresh_s: float = Field(
        30.0,
        ge=0,
        description="Least time between two JWKS fetches: a token with an unknown 'kid' triggers one refetch "
        "(key rotation), at most this often.",
    )
    jwks_timeout_s: float = Field(5.0, gt=0, description="Timeout of a JWKS fetch (seconds).")

    # -- API keys: in the documents store, under auth/keys/
    documents: DocumentsSettings = Field(
        default_factory=DocumentsSettings,
        description="The documents store, read from the RAG_* variables the ingestion lambda reads: API keys "
        "are kept (hashed) under auth/keys/ in RAG_DOCUMENTS_URI.",
    )

    @field_validator("jwt_audience", "jwt_audience_claims", "jwt_token_use", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("jwt_default_tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is not None and not TENANT_RE.fullmatch(value):
            raise ValueError("a tenant id is 1-63 characters of a-z, 0-9, '_' and '-', starting alphanumeric")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.jwt_issuer is not None:
            if not self.jwt_audience:
                raise ValueError("RAG_AUTH_JWT_ISSUER needs RAG_AUTH_JWT_AUDIENCE (the app client ids)")
            if not self.jwt_audience_claims:
                raise ValueError("RAG_AUTH_JWT_AUDIENCE_CLAIMS is empty")
            _check_url(self.jwks_url() or "", "RAG_AUTH_JWT_JWKS_URL")
        return self

    def jwks_url(self) -> str | None:
        if self.jwt_jwks_url:
            return self.jwt_jwks_url
        if self.jwt_issuer:
            return self.jwt_issuer.rstrip("/") + "/.well-known/jwks.json"
        return None

    @property
    def methods(self) -> list[str]:
        return list(self.auth.auth)


def _check_url(url: str, name: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return
    raise ValueError(f"{name} must be an https:// URL (http:// only on a loopback address)")
