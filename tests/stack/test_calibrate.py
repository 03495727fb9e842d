"""``localrag calibrate`` against the real stack: the sample_chunks action and the recommendation.

A small corpus on three topics is ingested; calibrate draws its chunks over the wire (sample_chunks, tenant
scoped), probes each with one of its sentences and the built-in off-topic questions through the search
action, and must recommend a threshold between the in-topic and the off-topic distances it measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.protocol import ChunkSample, ErrorCode
from shared.stack import Stack
from tests.conftest import StackFactory, WsClient, stack_keys
from tests.stack.test_cli import ok, run_cli

CORPUS = {
    "volcanoes.md": """\
# Volcanoes

A volcano forms where molten rock called magma rises through the Earth's crust. When pressure from dissolved
gases builds up, the volcano erupts, sending lava, ash and volcanic gases into the air. Most volcanoes sit
along tectonic plate boundaries, such as the Pacific Ring of Fire. Basaltic lava flows are runny and travel
far, while silica-rich magma is sticky and traps gas, which makes explosive eruptions. Volcanologists watch
ground swelling, small earthquakes and sulfur dioxide emissions to forecast eruptions.
""",
    "glaciers.txt": """\
Glaciers are rivers of ice that form where more snow falls in winter than melts in summer. Over years the
snow compacts into firn and then into dense glacial ice that flows slowly downhill under its own weight.
Glaciers carve U-shaped valleys, leave moraines of rock debris, and feed rivers with meltwater in summer.
Most mountain glaciers have been retreating for a century as summers warm.
""",
    "tides.txt": """\
Ocean tides are caused mainly by the Moon's gravity pulling on the oceans, with a smaller pull from the Sun.
Most coasts see two high tides and two low tides a day. Spring tides, with the largest range, happen at new
and full moon when the Sun and Moon line up; neap tides happen at the quarter moons. Tidal range depends on
the shape of the coast: the Bay of Fundy has the largest tides in the world.
""",
}


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    s = start_stack("calibrate")
    root = tmp_path_factory.mktemp("calibrate-corpus")
    for name, text in CORPUS.items():
        (root / name).write_text(text)
    ok(run_cli(s.ws_url, "ingest", str(root)))
    return s


def test_sample_chunks_draws_the_callers_tenants_chunks_only(stack: Stack) -> None:
    with WsClient(stack.ws_url) as ws:
        reply = ChunkSample.model_validate(ws.request({"action": "sample_chunks", "request_id": "s", "count": 100}))
        again = ChunkSample.model_validate(ws.request({"action": "sample_chunks", "count": 100, "seed": 7}))
        same = ChunkSample.model_validate(ws.request({"action": "sample_chunks", "count": 2, "seed": 7}))
        too_many = ws.request({"action": "sample_chunks", "count": 101})
    assert reply.request_id == "s" and reply.total == len(reply.chunks) >= 3
    assert {c.doc_id for c in reply.chunks} == set(CORPUS)
    assert all(c.text.strip() for c in reply.chunks)
    assert sorted((c.doc_id, c.chunk) for c in again.chunks) == sorted((c.doc_id, c.chunk) for c in reply.chunks)
    assert [(c.doc_id, c.chunk) for c in same.chunks] == [(c.doc_id, c.chunk) for c in again.chunks[:2]]
    assert too_many["type"] == "error" and too_many["code"] == ErrorCode.INVALID_REQUEST
    # Another tenant draws from its own (empty) corpus.
    with WsClient(stack.ws_url, key=stack_keys(stack).beta) as ws:
        other = ChunkSample.model_validate(ws.request({"action": "sample_chunks", "count": 10}))
    assert other.total == 0 and other.chunks == []


def test_calibrate_recommends_a_threshold_between_in_topic_and_off_topic_distances(
    stack: Stack, tmp_path: Path
) -> None:
    out = tmp_path / "calibration.json"
    result = ok(run_cli(stack.ws_url, "calibrate", "--probes", "20", "--out", str(out), "--current", "0.7"))
    assert "recommended RAG_MAX_DISTANCE=" in result.stdout
    report = json.loads(out.read_text())
    rec = report["recommended"]
    in_topic = [p["nearest"] for p in report["probes"] if p["kind"] == "in_topic"]
    off_topic = [p["nearest"] for p in report["probes"] if p["kind"] == "off_topic"]
    assert len(in_topic) == report["in_topic_probes"] == report["chunks_total"]  # fewer chunks than probes: all
    assert len(off_topic) == report["off_topic_probes"] >= 50
    # A sentence of a chunk finds its chunk; the threshold keeps (nearly) all of them and rejects most
    # everyday questions on this three-topic corpus.
    assert sorted(in_topic)[int(0.97 * len(in_topic)) - 1] <= rec
    assert sum(d > rec for d in off_topic) / len(off_topic) >= 0.8
    assert max(in_topic) < rec + 0.05 and rec < sorted(off_topic)[len(off_topic) // 2]
    assert f"{rec:.2f}" in result.stdout and "(current)" in result.stdout

    as_json = ok(run_cli(stack.ws_url, "--json", "calibrate", "--probes", "2"))
    summary = json.loads(as_json.stdout)
    assert summary["in_topic_probes"] == 2 and "probes" not in summary and summary["sweep"]
