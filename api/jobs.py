"""Where /v1/kb/sync jobs run, and how a job is shown.

The state of jobs and pending uploads is in the documents store (``shared/sync_jobs.py``), so any api
process (any Lambda execution environment) answers the same. A job runs in the ingestion function,
started by an asynchronous Lambda invoke (``InvocationType=Event``, API_SYNC_FUNCTION): the api returns at
once and the function records its progress into the job object. With no function configured the job
runs in the api process's worker pool instead (its state is still in the store; a process that dies
mid-job leaves it to go stale).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from api.models import SyncError, SyncJob
from shared.aws_clients import client_config, make_client
from shared.errors import RagError
from shared.protocol import ErrorCode
from shared.settings import InternalAuthSettings
from shared.sync_jobs import JobRecord, sync_event

log = logging.getLogger(__name__)


class SyncUnavailable(RagError):
    """The ingestion function could not be invoked (the job is marked failed; syncing again retries it)."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE


class LambdaSync:
    """Starts a job in the ingestion function: ``Invoke`` with ``InvocationType=Event`` (202, queued by
    Lambda, which retries a failed run twice). ``endpoint_url``: the local runtime (signed with the stack's
    internal key); None: AWS Lambda (signed with the function's role)."""

    def __init__(self, function: str, *, endpoint_url: str | None, region: str, timeout_s: float = 10.0) -> None:
        self.function = function
        key = InternalAuthSettings().signing_key()
        session = None
        if endpoint_url and key is not None:
            session = boto3.session.Session(
                aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret_access_key
            )
        self.client = make_client(
            "lambda",
            endpoint_url=endpoint_url,
            region=region,
            config=client_config(read_timeout=timeout_s),
            session=session,
        )

    def launch(self, tenant: str, job_id: str) -> None:
        """Queue the job's run (blocking: one short call); SyncUnavailable (or THROTTLED) when refused."""
        try:
            resp: dict[str, Any] = self.client.invoke(
                FunctionName=self.function,
                InvocationType="Event",
                Payload=json.dumps(sync_event(tenant, job_id)).encode("utf-8"),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            log.error("sync job %s: the ingestion function refused the invoke: %s", job_id, code)
            if code in ("TooManyRequestsException", "ThrottlingException"):
                raise SyncUnavailable("too many sync jobs at once; sync again shortly", ErrorCode.THROTTLED) from None
            raise SyncUnavailable("the ingestion function could not be invoked; sync again") from None
        except BotoCoreError as exc:
            log.error("sync job %s: the ingestion function is unreachable: %s", job_id, type(exc).__name__)
            raise SyncUnavailable("the ingestion function could not be reached; sync again") from None
        if resp.get("StatusCode") != 202:
            log.error("sync job %s: unexpected invoke status %s", job_id, resp.get("StatusCode"))
            raise SyncUnavailable("the ingestion function did not accept the job; sync again")


def job_view(job: JobRecord) -> SyncJob:
    """A job record as /v1/kb/status shows it."""
    errors = [
        SyncError(document=d.id, code=d.error.code, message=d.error.message)
        for d in job.documents
        if d.state == "failed" and d.error is not None
    ]
    if job.error is not None and not errors:
        errors.append(SyncError(document=None, code=job.error.code, message=job.error.message))
    return SyncJob(
        id=job.id,
        status=job.status,
        total=len(job.documents),
        succeeded=sum(d.state == "done" for d in job.documents),
        failed=sum(d.state == "failed" for d in job.documents),
        errors=errors,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
