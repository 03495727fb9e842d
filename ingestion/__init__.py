"""The ingestion lambda: documents -> chunks -> embeddings -> LanceDB (+ raw copy in the object store)."""
