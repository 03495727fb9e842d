# ruff: noqa
# fmt: off
# stream_chat_completion() of ../shared/seeds/serverless-rag-on-aws.txt ("Application Logic"; CI has no
# ../shared, hence this copy), as the article prints it (its indentation restored). The article does not
# print the module around it: the "module glue" below supplies what it uses -- the bedrock-runtime client
# and MODEL_ARN from the environment, as a Lambda gets them, and the Knowledge Base helpers, which answer
# "no retrieval" (Bedrock Knowledge Bases is not a surface of this product). The endpoint comes from the
# environment (AWS_ENDPOINT_URL_BEDROCK_RUNTIME, which boto3 honours). The driver at the end is test glue.

# ---- module glue (not printed in the article) ----
import json, logging, os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from pydantic import BaseModel

logger = logging.getLogger(__name__)
bedrock_runtime = boto3.client("bedrock-runtime")
MODEL_ARN = os.environ["MODEL_ARN"]

class Message(BaseModel):
    role: str
    content: str

class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[Message]
    stream: bool = False

def _needs_retrieval(query):
    return False  # no Knowledge Base here: every prompt is CONVERSATIONAL

def _retrieve(query):
    return []

def _build_citations(results):
    return []

def _build_messages(event, passages):
    system_prompt = "You are a helpful assistant. Answer briefly."
    messages = [{"role": m.role, "content": [{"text": m.content}]} for m in event.messages]
    return system_prompt, messages

# ---- the article's code ----
def stream_chat_completion(event: ChatCompletionRequest):
    """Retrieve from KB, then stream LLM response via converse_stream."""
    logger.info("Streaming chat completion request")
    # 1. Classify intent and retrieve in parallel to avoid sequential latency
    query = event.messages[-1].content
    with ThreadPoolExecutor(max_workers=2) as pool:
        classify_future = pool.submit(_needs_retrieval, query)
        retrieve_future = pool.submit(_retrieve, query)
        needs_retrieval = classify_future.result()
        results = retrieve_future.result() if needs_retrieval else []
    if results:
        logger.info(f"Retrieved {len(results)} chunks from KB")
    else:
        logger.info("Skipping retrieval based on query classification")
    # 2. Build citations from retrieved chunks (deduplicated)
    citations = _build_citations(results)
    # 3. Assemble passages text for the prompt
    passages = "\n\n---\n\n".join(r.get("content", {}).get("text", "") for r in results)
    # 4. Build messages and stream via converse_stream
    system_prompt, messages = _build_messages(event, passages)
    response = bedrock_runtime.converse_stream(
        modelId=MODEL_ARN,
        system=[{"text": system_prompt}],
        messages=messages,
    )
    for chunk in response.get("stream", []):
        if "contentBlockDelta" in chunk:
            text = chunk["contentBlockDelta"].get("delta", {}).get("text", "")
            if text:
                data = {
                    "choices": [
                        {"delta": {"content": text}, "index": 0, "finish_reason": None}
                    ]
                }
                yield f"data: {json.dumps(data)}\n\n"
    # 5. Send citations after the text stream completes
    if citations:
        yield f"data: {json.dumps({'type': 'citations', 'citations': citations})}\n\n"
    yield "data: [DONE]\n\n"

# ---- test glue: the chat completion request on stdin, the SSE stream on stdout ----
if __name__ == "__main__":
    request = ChatCompletionRequest.model_validate_json(sys.stdin.read())
    for line in stream_chat_completion(request):
        sys.stdout.write(line)
        sys.stdout.flush()
