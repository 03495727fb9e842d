"""boto3 client factories. An endpoint URL points a client at a local stand-in; None means AWS."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def client_config(
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 4,
    max_pool_connections: int = 16,
) -> Config:
    """Timeouts on every call; 'standard' retries back off with jitter on throttling and 5xx.

    ``max_attempts`` counts every attempt, the first included (botocore's ``total_max_attempts``; its
    own ``max_attempts`` key would count retries only). A throttled call (ThrottlingException,
    TooManyRequestsException, LimitExceededException, ...) waits rand(0, 1) * min(2 ** n, 20) seconds
    before retry n: with 4 attempts at most 1 + 2 + 4 s. GoneException and other 4xx are not retried."""
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        tcp_keepalive=True,
    )


def make_client(
    service: str,
    *,
    endpoint_url: str | None,
    region: str,
    config: Config | None = None,
    session: boto3.session.Session | None = None,
) -> Any:
    """A boto3 client. Local stand-ins don't check signatures, so if no credentials are configured
    and an endpoint is set, sign with placeholder ones rather than fail."""
    session = session or boto3.session.Session()
    kwargs: dict[str, Any] = {"region_name": region, "config": config or client_config()}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if session.get_credentials() is None:
            kwargs["aws_access_key_id"] = "local"
            kwargs["aws_secret_access_key"] = "local"
    return session.client(service, **kwargs)
