"""The ``localrag`` client: an async WebSocket client of the gateway (``ws_client``) and its CLI (``cli``).

Imports no service package: it speaks only the wire protocol (``shared.protocol``).
"""
