# ruff: noqa
# fmt: off
# The producer of ../shared/seeds/realtime-rag-kinesis-s3-vectors.txt (Step 2, put_event.py; CI has no
# ../shared, hence this copy), exactly as the article prints it. The endpoint comes from the environment
# (AWS_ENDPOINT_URL_KINESIS, which boto3 honours), with AWS_REGION and STREAM_NAME.

# put_event.py
import os, sys, json, uuid, time, boto3
kinesis = boto3.client("kinesis", region_name=os.environ["AWS_REGION"])
text = sys.argv[1]
doc_id = sys.argv[2] if len(sys.argv) > 2 else str(uuid.uuid4())
event = {
    "doc_id": doc_id,
    "text": text,
    "source": "cli",
    "ts": int(time.time()),
}
resp = kinesis.put_record(
    StreamName=os.environ["STREAM_NAME"],
    Data=json.dumps(event).encode("utf-8"),
    PartitionKey=doc_id,
)
print(f"put {doc_id} -> shard {resp['ShardId']} seq {resp['SequenceNumber'][:12]}...")
