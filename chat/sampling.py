"""``sample_chunks``: a uniform random sample of the caller's tenant's chunks, with their text.

The in-topic probes of threshold calibration (``localrag calibrate``, shared/client/calibrate.py) come
from the user's own chunks; this lets a client draw them from a deployed stack through the wire protocol,
for its own tenant only, as any other read.
"""

from __future__ import annotations

from shared.ports import ChatStore
from shared.protocol import SAMPLE_TEXT_CHARS, ChunkSample, SampleChunksRequest, SampledChunk


def sample_chunks(store: ChatStore, req: SampleChunksRequest, *, tenant: str) -> ChunkSample:
    total, rows = store.sample_chunks(req.count, tenant=tenant, seed=req.seed)
    return ChunkSample(
        request_id=req.request_id,
        total=total,
        chunks=[
            SampledChunk(
                doc_id=r["doc_id"], title=r["title"] or "", chunk=int(r["chunk"]), text=r["text"][:SAMPLE_TEXT_CHARS]
            )
            for r in rows
        ],
    )
