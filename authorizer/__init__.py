"""The authorizer function: API Gateway's Lambda REQUEST authorizer for $connect and the /v1 HTTP API.

A function of its own (not a route of the chat lambda): API Gateway invokes an authorizer separately,
before any integration runs, and caches its answer; a separate function keeps its cold start small (no
LanceDB, no tokenizer), its IAM role down to reading auth/keys/, and its concurrency apart from chat's.
"""
