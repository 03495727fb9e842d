"""The common library: wire protocol, AWS event shapes, adapters shared by every service."""
