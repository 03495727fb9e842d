"""The gateway: a local API Gateway WebSocket API with its @connections management API."""
