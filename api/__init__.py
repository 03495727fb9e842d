"""The OpenAI-compatible HTTP API and the web chat: an HTTP function (AWS Lambda Web Adapter on AWS)."""
