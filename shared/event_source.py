"""The local stand-in for Lambda's Kinesis event source mapping: ``python -m shared.event_source``.

On AWS, an event source mapping (template.yaml: ``IngestionKinesisMapping``) polls each shard of the
documents stream and invokes the ingestion function with batches of records. Locally this process does the
same, against a Kinesis endpoint (moto's server, started by ``make up``; ``RAG_KINESIS_ENDPOINT_URL``):

- every shard is read in order, by its own thread: GetShardIterator (``TRIM_HORIZON`` the first time, then
  ``AFTER_SEQUENCE_NUMBER`` of the shard's checkpoint), GetRecords up to ``BatchSize`` records, waiting up to
  ``MaximumBatchingWindowInSeconds`` to fill a batch. A shard that returned records is read again at once
  (Lambda "keeps processing batches until the function catches up with the stream"); one that returned
  none, every ``poll_interval_s`` (50 ms), and after ``idle_after_s`` without records once a second
  (Lambda's base rate);
- ``ParallelizationFactor``: the records read go to that many lanes of the shard by their partition key's
  MD5, each lane delivering its records in order, one batch at a time (up to ``BatchSize`` of what it has
  queued), so up to that many batches of a shard are in flight and one key's records still apply in order.
  The reader reads while a lane is free (neither delivering nor holding records; and fewer than factor x
  ``BatchSize`` records are not yet done): with factor 1, a shard is read again once its batch is done;
- a batch becomes the Kinesis event Lambda sends (``eventSource: aws:kinesis``, ``eventID
  shardId-...:seq``, ``kinesis.data`` base64 ...) and is invoked through the Lambda Invoke API
  (RequestResponse, SigV4-signed with the stack's internal key, as the gateway invokes);
- the answer is honoured as AWS does (``ReportBatchItemFailures``): ``batchItemFailures`` -> checkpoint
  just before the lowest failed sequence number and retry from it; a function error -> bisect the batch
  (``BisectBatchOnFunctionError``) and retry each half; an answer naming a record not in the batch, or
  an empty identifier -> the whole batch failed. After ``MaximumRetryAttempts`` (or once the oldest record
  is older than ``MaximumRecordAgeInSeconds``) the batch's metadata (Lambda's on-failure invocation record,
  ``KinesisBatchInfo``: shard, first and last sequence numbers, no data) is sent to the on-failure
  destination, an SQS queue on the same endpoint, and the shard moves on;
- an invocation that cannot be made (the function is restarting, throttled, 5xx) is retried with backoff
  and counts as no attempt (Lambda retries throttles and service errors until the records expire).

The checkpoints (last sequence number done, per shard) are a JSON file under the data folder, written
(atomically) whenever the records done without a gap in stream order grow (``ShardProgress``): a restarted
poller re-delivers nothing before it; records of other lanes done after a gap are delivered again (at least
once, as on AWS), each key's still in order.

``GET /health`` answers the poller's counters as JSON. Each invocation is logged (one line: its sequence
numbers, when GetRecords returned them, when it was invoked and answered: bench/kinesis.py's stages).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.logs import bound, configure_logging
from shared.serving import inherited_socket, listening_socket, url_of
from shared.settings import InternalAuthSettings
from shared.sigv4 import sign

log = logging.getLogger("event_source")

# moto's (and the docs' example) account: the ARNs in the events name it.
LOCAL_ACCOUNT = "123456789012"


class EventSourceSettings(BaseSettings):
    """The Kinesis stream, the function it feeds, and the mapping's settings (template.yaml's
    ``IngestionKinesisMapping`` has the same values)."""

    model_config = SettingsConfigDict(env_prefix="RAG_KINESIS_", extra="ignore", populate_by_name=True)

    endpoint_url: str | None = Field(
        None,
        description="Kinesis endpoint the local event source mapping polls (and producers put to): moto's "
        "server, which `make up` starts unless this is set; unset in the poller = AWS.",
    )
    stream_name: str = Field(
        "localrag-documents", min_length=1, max_length=128, description="The documents stream (Kinesis)."
    )
    create_stream: bool = Field(
        True, description="Create the stream (and the on-failure queue) when missing: local endpoints only."
    )
    shard_count: int = Field(1, ge=1, le=64, description="Shards of a stream the poller creates.")
    function_url: str | None = Field(
        None,
        description="The ingestion function's Invoke URL (.../2015-03-31/functions/ingestion/invocations); "
        "the launcher sets it.",
    )
    function_name: str = Field("ingestion", min_length=1, description="The function named in events' ARNs.")
    batch_size: int = Field(100, ge=1, le=10_000, description="BatchSize: most records per invocation.")
    parallelization_factor: int = Field(
        1,
        ge=1,
        le=10,
        description="ParallelizationFactor: batches of one shard in flight at once. A record joins one of "
        "them by its partition key (MD5, as Kinesis maps keys to shards), so one key's records (one "
        "document's versions, PartitionKey = doc_id) still apply in order; the checkpoint moves only over "
        "records done in stream order. 1 (one batch per shard at a time): on two cores a second batch only "
        "competes with the first for the CPU (make bench-kinesis, README).",
    )
    maximum_batching_window_s: float = Field(
        0.0, ge=0, le=300, description="MaximumBatchingWindowInSeconds: how long to gather records for a batch."
    )
    maximum_retry_attempts: int = Field(
        3, ge=-1, le=10_000, description="MaximumRetryAttempts of a failing batch (-1: until the records expire)."
    )
    maximum_record_age_s: int = Field(
        3600,
        ge=-1,
        le=604_800,
        description="MaximumRecordAgeInSeconds: older records go to the on-failure destination (-1: no limit).",
    )
    bisect_on_function_error: bool = Field(
        True, description="BisectBatchOnFunctionError: split a batch whose invocation failed and retry each half."
    )
    on_failure_queue: str | None = Field(
        "localrag-documents-failures",
        description="SQS queue (on the same endpoint) receiving the metadata of batches that ran out of "
        "retries; unset = they are only logged.",
    )
    poll_interval_s: float = Field(
        0.05,
        gt=0,
        le=10,
        description="Wait between GetRecords calls on a shard that returned nothing while records flow (a shard "
        "that returned records is read again at once, as Lambda keeps reading a shard until it is caught up). "
        "Lambda polls about once a second; locally shorter, for latency: an empty GetRecords costs moto's "
        "server ~4 ms of CPU.",
    )
    idle_poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="The wait once a shard has had no record for idle_after_s (Lambda polls an idle shard "
        "once a second): an idle stack costs next to nothing; the first record after a lull waits up to this.",
    )
    idle_after_s: float = Field(5.0, ge=0, description="How long without records makes a shard idle.")
    retry_backoff_s: float = Field(
        0.2, gt=0, le=60, description="First wait before retrying a failed batch (doubles, up to 5 s)."
    )
    invoke_timeout_s: float = Field(300.0, gt=0, description="How long an invocation may run (the function's Timeout).")
    checkpoint_dir: Path = Field(
        Path("data/event-source"), description="Where the poller keeps its per-shard checkpoints (JSON)."
    )
    region: str = Field("us-east-1", validation_alias="RAG_AWS_REGION", description="AWS region of the ARNs.")
    host: str = Field("127.0.0.1", description="The poller's /health listener.")
    port: int = Field(0, ge=0, le=65535, description="Its port (0: any free port).")
    log_level: str = Field("INFO", description="Log level of the poller.")

    def stream_arn(self) -> str:
        return f"arn:aws:kinesis:{self.region}:{LOCAL_ACCOUNT}:stream/{self.stream_name}"

    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{LOCAL_ACCOUNT}:function:{self.function_name}"


# ---------------------------------------------------------------------- the mapping's logic (no I/O)


@dataclass(frozen=True)
class Record:
    """A record as GetRecords returns it."""

    sequence_number: str
    partition_key: str
    data: bytes
    arrival: float  # ApproximateArrivalTimestamp, Unix seconds
    read_at: float = 0.0  # when GetRecords returned it, Unix seconds (logged with its invocation)

    @classmethod
    def from_kinesis(cls, raw: dict[str, Any], read_at: float | None = None) -> Record:
        arrival = raw.get("ApproximateArrivalTimestamp")
        ts = arrival.timestamp() if isinstance(arrival, datetime) else float(arrival or time.time())
        return cls(str(raw["SequenceNumber"]), str(raw["PartitionKey"]), bytes(raw["Data"]), ts, read_at or time.time())


def kinesis_event(records: Sequence[Record], shard_id: str, settings: EventSourceSettings) -> dict[str, Any]:
    """The event Lambda's Kinesis event source sends: one entry per record, data base64."""
    role = f"arn:aws:iam::{LOCAL_ACCOUNT}:role/localrag-{settings.function_name}"
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key,
                    "sequenceNumber": r.sequence_number,
                    "data": base64.b64encode(r.data).decode("ascii"),
                    "approximateArrivalTimestamp": round(r.arrival, 3),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r.sequence_number}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": role,
                "awsRegion": settings.region,
                "eventSourceARN": settings.stream_arn(),
            }
            for r in records
        ]
    }


@dataclass(frozen=True)
class Answer:
    """What an invocation came back with: a function error, or the partial batch response's identifiers.
    ``unavailable``: the invocation could not be made (no attempt is counted)."""

    function_error: str | None = None
    failed: tuple[str, ...] = ()
    unavailable: str | None = None
    status: int = 200


def parse_answer(status: int, function_error: str | None, payload: bytes) -> Answer:
    """The Invoke API's answer -> Answer. A malformed partial batch response fails the whole batch, as on
    AWS (here: as if every record had failed, identified by the sentinel ``*``)."""
    if function_error:
        return Answer(function_error=function_error, status=status)
    if not payload.strip():
        return Answer(status=status)
    try:
        body = json.loads(payload)
    except ValueError:
        return Answer(status=status)  # not a batch response: Lambda counts the batch as processed
    if not isinstance(body, dict) or not body.get("batchItemFailures"):
        return Answer(status=status)
    items = body["batchItemFailures"]
    failed: list[str] = []
    if not isinstance(items, list):
        return Answer(failed=("*",), status=status)
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or not ident:
            return Answer(failed=("*",), status=status)
        failed.append(ident)
    return Answer(failed=tuple(failed), status=status)


Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]


@dataclass(frozen=True)
class Discarded:
    """A batch given up on: what goes to the on-failure destination."""

    records: tuple[Record, ...]
    condition: Condition
    invoke_count: int
    function_error: str | None


Invoke = Callable[[Sequence[Record]], Answer]


@dataclass
class BatchDelivery:
    """Deliver one batch of a shard's records with Lambda's semantics; ``checkpoint(part)`` is called with
    each part that is done (succeeded or discarded), in order: every record up to the part's last is done;
    ``discard`` with each part given up on. ``sleep`` waits between retries (tests pass a recorder)."""

    settings: EventSourceSettings
    invoke: Invoke
    checkpoint: Callable[[Sequence[Record]], None]
    discard: Callable[[Discarded], None]
    sleep: Callable[[float], object] = time.sleep
    clock: Callable[[], float] = time.time
    stop: threading.Event = field(default_factory=threading.Event)
    invocations: int = 0

    def deliver(self, records: Sequence[Record]) -> None:
        if records:
            self._deliver(tuple(records), retries=0)

    def _backoff(self, n: int) -> None:
        wait = min(self.settings.retry_backoff_s * (2**n), 5.0)
        self.sleep(wait / 2 + random.uniform(0, wait / 2))

    def _too_old(self, records: Sequence[Record]) -> bool:
        age = self.settings.maximum_record_age_s
        return age >= 0 and self.clock() - records[0].arrival > age

    def _out_of_retries(self, retries: int) -> bool:
        limit = self.settings.maximum_retry_attempts
        return limit >= 0 and retries > limit

    def _deliver(self, batch: tuple[Record, ...], retries: int) -> None:
        unavailable = 0
        while batch and not self.stop.is_set():
            if self._too_old(batch):
                self.discard(Discarded(batch, "RecordAgeExceeded", self.invocations, None))
                self.checkpoint(batch)
                return
            self.invocations += 1
            answer = self.invoke(batch)
            if answer.unavailable is not None:
                log.warning("invoke unavailable (%s); retrying the batch", answer.unavailable)
                self._backoff(min(unavailable, 5))
                unavailable += 1
                continue
            unavailable = 0
            if answer.function_error is not None:
                if self.settings.bisect_on_function_error and len(batch) > 1:
                    # Splitting does not count against the retries (as on AWS); each half in order.
                    half = len(batch) // 2
                    log.warning("function error (%s) on %d records: bisecting", answer.function_error, len(batch))
                    self._deliver(batch[:half], retries)
                    self._deliver(batch[half:], retries)
                    return
                retries += 1
                if self._out_of_retries(retries):
                    self.discard(Discarded(batch, "RetryAttemptsExhausted", self.invocations, answer.function_error))
                    self.checkpoint(batch)
                    return
                self._backoff(retries - 1)
                continue
            if not answer.failed:
                self.checkpoint(batch)
                return
            seqs = [r.sequence_number for r in batch]
            # An unknown or empty identifier: the whole batch failed.
            known = all(f in seqs for f in answer.failed)
            first = min(seqs.index(f) for f in answer.failed) if known else 0
            if first > 0:
                self.checkpoint(batch[:first])
                batch = batch[first:]
            retries += 1
            log.warning(
                "%d record(s) failed; retrying from %s (%d record(s), retry %d)",
                len(answer.failed),
                batch[0].sequence_number,
                len(batch),
                retries,
            )
            if self._out_of_retries(retries):
                self.discard(Discarded(batch, "RetryAttemptsExhausted", self.invocations, None))
                self.checkpoint(batch)
                return
            self._backoff(retries - 1)


def on_failure_record(part: Discarded, shard_id: str, settings: EventSourceSettings) -> dict[str, Any]:
    """Lambda's on-failure invocation record for a Kinesis batch (metadata only: read the records from the
    stream by their sequence numbers)."""

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
    if part.function_error:
        response["functionError"] = part.function_error
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": settings.function_arn(),
            "condition": part.condition,
            "approximateInvokeCount": part.invoke_count,
        },
        "responseContext": response,
        "version": "1.0",
        "timestamp": iso(time.time()),
        "KinesisBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": part.records[0].sequence_number,
            "endSequenceNumber": part.records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": iso(part.records[0].arrival),
            "approximateArrivalOfLastRecord": iso(part.records[-1].arrival),
            "batchSize": len(part.records),
            "streamArn": settings.stream_arn(),
        },
    }


def lane_of(partition_key: str, factor: int) -> int:
    """Which of a shard's ``factor`` lanes a record joins: by its partition key's MD5 (Kinesis maps keys to
    shards the same way), so that one key's records are delivered by one lane, in order."""
    if factor <= 1:
        return 0
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest()[:8], "big") % factor


class ShardProgress:
    """A shard's records read and not yet done, in stream order. Lanes mark records done in any order;
    ``done`` answers the sequence number the shard's checkpoint may move to (every record read up to it is
    done) or None when the oldest record read is still under way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[str] = deque()
        self._done: set[str] = set()

    def read(self, records: Sequence[Record]) -> None:
        with self._lock:
            self._pending.extend(r.sequence_number for r in records)

    def __len__(self) -> int:
        """Records read and not yet behind the checkpoint."""
        with self._lock:
            return len(self._pending)

    def done(self, records: Sequence[Record]) -> str | None:
        with self._lock:
            self._done.update(r.sequence_number for r in records)
            last = None
            while self._pending and self._pending[0] in self._done:
                last = self._pending.popleft()
                self._done.discard(last)
            return last


class Checkpoints:
    """The last sequence number done per shard, in ``{dir}/{stream}.json`` (atomic replace), for one
    incarnation of the stream (``epoch``: its creation time): the checkpoints of a stream deleted and
    created again (moto's server keeps its streams in memory) are not this one's, and are dropped."""

    def __init__(self, directory: Path, stream: str, epoch: str = "") -> None:
        self.path = directory / f"{stream}.json"
        self.epoch = epoch
        self._lock = threading.Lock()
        self._data: dict[str, str] = {}
        if self.path.is_file():
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and loaded.get("epoch") == epoch and isinstance(loaded.get("shards"), dict):
                self._data = {str(k): str(v) for k, v in loaded["shards"].items()}
            else:
                log.warning("checkpoints in %s are of another incarnation of the stream: starting over", self.path)

    def get(self, shard_id: str) -> str | None:
        with self._lock:
            return self._data.get(shard_id)

    def set(self, shard_id: str, seq: str) -> None:
        with self._lock:
            old = self._data.get(shard_id)
            if old is not None and int(old) >= int(seq):
                return
            self._data[shard_id] = seq
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"epoch": self.epoch, "shards": self._data}, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)


# ---------------------------------------------------------------------- the poller (I/O)


@dataclass
class Stats:
    batches: int = 0
    records_done: int = 0  # records checkpointed past (succeeded or discarded)
    invocations: int = 0
    discarded_batches: int = 0
    discarded_records: int = 0
    shards: int = 0
    in_flight_max: int = 0  # most batches of one shard invoked at once (at most ParallelizationFactor)


class Poller:
    """One thread per shard of the stream; see the module docstring."""

    def __init__(self, settings: EventSourceSettings, kinesis: Any, sqs: Any | None) -> None:
        self.settings = settings
        self.kinesis = kinesis
        self.sqs = sqs
        self._checkpoints: Checkpoints | None = None  # loaded by ensure_stream (they belong to the stream)
        self.failed = threading.Event()  # a shard's reader died: the process exits (and is restarted)
        self.stop = threading.Event()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._queue_url: str | None = None
        internal = InternalAuthSettings()
        self._key = internal.signing_key()

    # -- setup

    def ensure_stream(self, wait_s: float = 120.0) -> None:
        """Wait for the endpoint, create the stream (and the on-failure queue) if missing and allowed, and
        load the checkpoints of this incarnation of the stream."""
        from botocore.exceptions import EndpointConnectionError

        s = self.settings
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.kinesis.describe_stream_summary(StreamName=s.stream_name)
                break
            except self.kinesis.exceptions.ResourceNotFoundException:
                if not s.create_stream:
                    raise
                self.kinesis.create_stream(StreamName=s.stream_name, ShardCount=s.shard_count)
                log.info("created stream %s (%d shards)", s.stream_name, s.shard_count)
                break
            except EndpointConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the local endpoint is still starting
        waiter = self.kinesis.get_waiter("stream_exists")
        waiter.wait(StreamName=s.stream_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
        summary = self.kinesis.describe_stream_summary(StreamName=s.stream_name)["StreamDescriptionSummary"]
        epoch = summary.get("StreamCreationTimestamp")
        epoch_text = epoch.isoformat() if isinstance(epoch, datetime) else str(epoch)
        self._checkpoints = Checkpoints(s.checkpoint_dir, s.stream_name, epoch_text)
        if self.sqs is not None and s.on_failure_queue:
            if s.create_stream:
                self._queue_url = self.sqs.create_queue(QueueName=s.on_failure_queue)["QueueUrl"]
            else:
                self._queue_url = self.sqs.get_queue_url(QueueName=s.on_failure_queue)["QueueUrl"]

    @property
    def checkpoints(self) -> Checkpoints:
        if self._checkpoints is None:
            raise RuntimeError("ensure_stream() first")
        return self._checkpoints

    def shard_ids(self) -> list[str]:
        shards: list[str] = []
        kwargs: dict[str, Any] = {"StreamName": self.settings.stream_name}
        while True:
            page = self.kinesis.list_shards(**kwargs)
            shards.extend(s["ShardId"] for s in page["Shards"])
            token = page.get("NextToken")
            if not token:
                return shards
            kwargs = {"NextToken": token}

    # -- one shard

    def invoke(self, records: Sequence[Record], shard_id: str) -> Answer:
        s = self.settings
        if not s.function_url:
            raise RuntimeError("RAG_KINESIS_FUNCTION_URL is not set")
        body = json.dumps(kinesis_event(records, shard_id, s)).encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": "RequestResponse"}
        if self._key is not None:
            headers = sign("POST", s.function_url, headers, body, key=self._key, service="lambda", region=s.region)
        request = urllib.request.Request(s.function_url, data=body, headers=headers, method="POST")
        with self._lock:
            self.stats.invocations += 1
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=s.invoke_timeout_s) as resp:
                answer = parse_answer(resp.status, resp.headers.get("X-Amz-Function-Error"), resp.read())
        except urllib.error.HTTPError as exc:
            answer = Answer(unavailable=f"HTTP {exc.code}", status=exc.code)
        except (urllib.error.URLError, OSError) as exc:
            answer = Answer(unavailable=type(exc).__name__, status=0)
        ended = time.time()
        # One line per invocation, with the times bench/kinesis.py breaks a record's latency down by.
        log.info(
            "invoked %s with %d record(s) in %.0f ms: %s",
            s.function_name,
            len(records),
            (ended - started) * 1000,
            answer.function_error or answer.unavailable or f"{len(answer.failed)} failed",
            extra={
                "first_sequence_number": records[0].sequence_number,
                "last_sequence_number": records[-1].sequence_number,
                "read_at": round(min(r.read_at for r in records), 4),
                "invoked_at": round(started, 4),
                "answered_at": round(ended, 4),
            },
        )
        return answer

    def send_failure(self, part: Discarded, shard_id: str) -> None:
        record = on_failure_record(part, shard_id, self.settings)
        info = record["KinesisBatchInfo"]
        log.error(
            "discarding %d record(s) of %s (%s..%s): %s",
            len(part.records),
            shard_id,
            info["startSequenceNumber"],
            info["endSequenceNumber"],
            part.condition,
        )
        with self._lock:
            self.stats.discarded_batches += 1
            self.stats.discarded_records += len(part.records)
        if self.sqs is not None and self._queue_url is not None:
            self.sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(record))

    def run_shard(self, shard_id: str) -> None:
        try:
            self._run_shard(shard_id)
        except Exception as exc:
            log.error("reading %s failed: %s", shard_id, type(exc).__name__, exc_info=True)
            self.failed.set()
            self.stop.set()

    def _run_shard(self, shard_id: str) -> None:
        """Read the shard (this thread) and deliver its records through ParallelizationFactor lanes."""
        s = self.settings
        factor = s.parallelization_factor
        progress = ShardProgress()
        room = factor * s.batch_size  # records read ahead and not yet done, at most
        cond = threading.Condition()
        queues: list[deque[Record]] = [deque() for _ in range(factor)]
        read_to_end = threading.Event()  # the reader is done: the lanes deliver what they hold, then end
        running = [False] * factor  # lanes delivering a batch

        def all_lanes_taken() -> bool:
            """Every lane delivering a batch or holding records it has yet to start (call under cond)."""
            return all(running[i] or queues[i] for i in range(factor))

        def checkpoint(done: Sequence[Record]) -> None:
            last = progress.done(done)
            if last is not None:
                self.checkpoints.set(shard_id, last)
            with self._lock:
                self.stats.records_done += len(done)
            with cond:
                cond.notify_all()  # room to read ahead again

        def lane(i: int) -> None:
            with bound(shard_id=shard_id, lane=i):
                delivery = BatchDelivery(
                    s,
                    invoke=lambda recs: self.invoke(recs, shard_id),
                    checkpoint=checkpoint,
                    discard=lambda part: self.send_failure(part, shard_id),
                    sleep=lambda t: self.stop.wait(t),
                    stop=self.stop,
                )
                queue = queues[i]
                while True:
                    with cond:
                        while not queue and not read_to_end.is_set() and not self.stop.is_set():
                            cond.wait(1.0)
                        if self.stop.is_set() or not queue:
                            return
                        batch = [queue.popleft() for _ in range(min(len(queue), s.batch_size))]
                        running[i] = True
                        with self._lock:
                            self.stats.batches += 1
                            self.stats.in_flight_max = max(self.stats.in_flight_max, sum(running))
                    try:
                        delivery.deliver(batch)
                    finally:
                        with cond:
                            running[i] = False
                            cond.notify_all()  # the reader may read again

        def guarded(i: int) -> None:
            try:
                lane(i)
            except Exception as exc:
                log.error("delivering %s failed: %s", shard_id, type(exc).__name__, exc_info=True)
                self.failed.set()
                self.stop.set()
                with cond:
                    cond.notify_all()

        lanes = [
            threading.Thread(target=guarded, args=(i,), name=f"{shard_id}/{i}", daemon=True) for i in range(factor)
        ]
        for t in lanes:
            t.start()
        try:
            with bound(shard_id=shard_id):
                iterator = self._iterator(shard_id)
                last_record = time.monotonic()
                while not self.stop.is_set() and iterator:
                    with cond:
                        # Read when a batch could start: with every lane taken, the records read would wait
                        # for a batch to end, and the GetRecords calls (moto's server spends ~4 ms on each)
                        # would take CPU from the batches running.
                        while (all_lanes_taken() or len(progress) >= room) and not self.stop.is_set():
                            cond.wait(1.0)
                    if self.stop.is_set():
                        break
                    batch, iterator = self._gather(iterator)
                    if batch:
                        last_record = time.monotonic()
                        progress.read(batch)  # before any lane can mark one done
                        with cond:
                            for r in batch:
                                queues[lane_of(r.partition_key, factor)].append(r)
                            cond.notify_all()
                    elif iterator:
                        idle = time.monotonic() - last_record > s.idle_after_s
                        self.stop.wait(s.idle_poll_interval_s if idle else s.poll_interval_s)
                if not iterator:
                    log.info("shard %s is closed and read to its end", shard_id)
        finally:
            with cond:
                read_to_end.set()
                cond.notify_all()
            if not self.stop.is_set():
                for t in lanes:
                    t.join()

    def _iterator(self, shard_id: str) -> str | None:
        done = self.checkpoints.get(shard_id)
        kwargs: dict[str, Any] = {"StreamName": self.settings.stream_name, "ShardId": shard_id}
        if done is None:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=done)
        log.info("reading %s from %s", shard_id, f"after {done}" if done else "TRIM_HORIZON")
        it: str | None = self.kinesis.get_shard_iterator(**kwargs)["ShardIterator"]
        return it

    def _gather(self, iterator: str) -> tuple[list[Record], str | None]:
        """GetRecords until the batch is full, the batching window has passed, or the shard has nothing more."""
        s = self.settings
        batch: list[Record] = []
        deadline = time.monotonic() + s.maximum_batching_window_s
        next_it: str | None = iterator
        while next_it and not self.stop.is_set():
            page = self.kinesis.get_records(ShardIterator=next_it, Limit=min(s.batch_size - len(batch), 10_000))
            read_at = time.time()
            batch.extend(Record.from_kinesis(r, read_at) for r in page["Records"])
            next_it = page.get("NextShardIterator")
            if len(batch) >= s.batch_size or time.monotonic() >= deadline:
                break
            if not page["Records"]:
                self.stop.wait(min(s.poll_interval_s, max(0.0, deadline - time.monotonic())))
        return batch, next_it

    def run(self) -> list[threading.Thread]:
        shards = self.shard_ids()
        self.stats.shards = len(shards)
        threads = [threading.Thread(target=self.run_shard, args=(sid,), name=sid, daemon=True) for sid in shards]
        for t in threads:
            t.start()
        return threads


def _health_server(poller: Poller, settings: EventSourceSettings) -> ThreadingHTTPServer:
    sock = inherited_socket() or listening_socket(settings.host, settings.port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/health":
                self.send_error(404)
                return
            body = json.dumps(
                {"status": "ok", "stream": settings.stream_name, **asdict(poller.stats)},
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that went away mid-answer (a health probe that timed out): one line, no traceback.
            exc = sys.exc_info()[1]
            log.warning("/health: %s", type(exc).__name__ if exc else "error")

    server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    return server


def main() -> int:
    settings = EventSourceSettings()
    configure_logging(settings.log_level, "event_source")
    from shared.aws_clients import make_client

    kinesis = make_client("kinesis", endpoint_url=settings.endpoint_url, region=settings.region)
    sqs = (
        make_client("sqs", endpoint_url=settings.endpoint_url, region=settings.region)
        if settings.on_failure_queue
        else None
    )
    poller = Poller(settings, kinesis, sqs)
    poller.ensure_stream()
    poller.run()
    server = _health_server(poller, settings)

    def stop(signum: int, frame: object) -> None:
        poller.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"event_source: listening on {url_of(server.socket)}", flush=True)
    log.info("polling %s (%d shards) for %s", settings.stream_name, poller.stats.shards, settings.function_name)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    while not poller.stop.wait(0.5):
        pass
    server.shutdown()
    # A shard's reader died (the endpoint went away, the stream was deleted): exit, to be started again.
    return 1 if poller.failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
