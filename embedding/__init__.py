"""Embedding service: a local stand-in for Amazon Bedrock Runtime InvokeModel on embedding models.

Serves a sentence-transformers model (all-MiniLM-L6-v2 by default) behind ``POST /model/{modelId}/invoke``,
accepting Amazon Titan Text Embeddings V2 and Cohere Embed request bodies. Run with ``python -m embedding``;
settings come from ``EMBEDDING_*`` environment variables (see ``embedding.settings``).
"""
