# ruff: noqa
# fmt: off
# The embedding code of ../shared/seeds/realtime-rag-kinesis-s3-vectors.txt (CI has no ../shared, hence this
# copy), as the article prints it. Only what needs S3 Vectors (not a surface of this product) is cut, each cut
# marked "# CUT (s3vectors)"; the endpoint comes from the environment (AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
# which boto3 honours), nothing else changes. The driver at the end is test glue, not article code.

# ---- Step 3, handler.py ----
import os, json, base64, boto3
region = os.environ["AWS_REGION"]
bedrock = boto3.client("bedrock-runtime", region_name=region)
# CUT (s3vectors): s3v = boto3.client("s3vectors", region_name=region)
# CUT (s3vectors): BUCKET = os.environ["VECTOR_BUCKET"]
# CUT (s3vectors): INDEX = os.environ["VECTOR_INDEX"]
def embed(text):
    resp = bedrock.invoke_model(
        modelId="amazon.titan-embed-text-v2:0",
        body=json.dumps({"inputText": text, "dimensions": 1024, "normalize": True}),
    )
    return json.loads(resp["body"].read())["embedding"]
def handler(event, _ctx):
    vectors = []
    for record in event["Records"]:
        payload = base64.b64decode(record["kinesis"]["data"])
        doc = json.loads(payload)
        vectors.append({
            "key": doc["doc_id"],
            "data": {"float32": embed(doc["text"])},
            "metadata": {
                "source": doc["source"],
                "ts": doc["ts"],
                "source_text": doc["text"],
            },
        })
    # CUT (s3vectors): if vectors:
    # CUT (s3vectors):     s3v.put_vectors(vectorBucketName=BUCKET, indexName=INDEX, vectors=vectors)
    print(f"indexed {len(vectors)} vectors")
    return {"indexed": len(vectors)}

# ---- Step 5, ask.py: the query embedding ----
import os, sys, json, boto3
region = os.environ["AWS_REGION"]
bedrock = boto3.client("bedrock-runtime", region_name=region)
# CUT (s3vectors): s3v = boto3.client("s3vectors", region_name=region)
question = sys.argv[1]
qvec = json.loads(bedrock.invoke_model(
    modelId="amazon.titan-embed-text-v2:0",
    body=json.dumps({"inputText": question, "dimensions": 1024, "normalize": True}),
)["body"].read())["embedding"]
# CUT (s3vectors): hits = s3v.query_vectors(...) and the prompt built from them; the answer's
# bedrock.converse call (amazon.nova-lite-v1:0) needs those hits, so it goes with them.

# ---- test glue: a Kinesis event of the documents on stdin through handler(), then the vectors as JSON ----
if __name__ == "__main__":
    docs = json.loads(sys.stdin.read())
    event = {"Records": [{"kinesis": {"data": base64.b64encode(json.dumps(d).encode()).decode()}} for d in docs]}
    result = handler(event, None)
    print(json.dumps({"result": result, "qvec": qvec, "docs": {d["doc_id"]: embed(d["text"]) for d in docs}}))
