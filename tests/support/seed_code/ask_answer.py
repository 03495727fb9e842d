# ruff: noqa
# fmt: off
# The answer half of ask.py in ../shared/seeds/realtime-rag-kinesis-s3-vectors.txt (Step 5; CI has no
# ../shared, hence this copy), as the article prints it. The S3 Vectors query (not a surface of this
# product) is cut, marked "# CUT (s3vectors)", and its hits come from the test instead; the endpoint comes
# from the environment (AWS_ENDPOINT_URL_BEDROCK_RUNTIME, which boto3 honours); nothing else changes.

import os, sys, json, boto3
region = os.environ["AWS_REGION"]
bedrock = boto3.client("bedrock-runtime", region_name=region)
# CUT (s3vectors): s3v = boto3.client("s3vectors", region_name=region)
question = sys.argv[1]
# CUT (s3vectors): qvec = ... (the Titan embedding; tests/support/seed_code/embed_snippet.py runs it)
# CUT (s3vectors): hits = s3v.query_vectors(...)["vectors"]
hits = [{"metadata": {"source_text": text}} for text in json.loads(os.environ["SEED_HITS"])]  # test glue
context = "\n\n".join(h["metadata"]["source_text"] for h in hits)
prompt = f"Answer using only the context. If it is not there, say so.\n\nContext:\n{context}\n\nQuestion: {question}"
answer = bedrock.converse(
    modelId="amazon.nova-lite-v1:0",
    messages=[{"role": "user", "content": [{"text": prompt}]}],
)
print(answer["output"]["message"]["content"][0]["text"])
