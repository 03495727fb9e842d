"""Local stand-in for Amazon Bedrock Runtime (Converse / ConverseStream) backed by llama.cpp.

Run it with ``python -m llm``; configure it with ``LLM_*`` environment variables (see ``llm.settings``).
"""
