"""Streaming: a run marked `@streaming` that is a generator sends each yielded
value to the server the moment it is yielded. A request with `Accept:
text/event-stream` is answered with server-sent events: `start` (the
prediction), `output` ({"chunk", "index"}) and `log` ({"source", "data"}) as
they happen, then `completed` (the final prediction, whatever its status), and
the stream ends. A model not marked `@streaming` answers 406.

Each prediction keeps its last COG_STREAM_HISTORY_CAPACITY events (1024 by
default, 0: live only). `PUT /predictions/{id}` with the id of a running
prediction attaches another stream, which replays that history and then follows
live events; when the history was truncated it gets one `error` event instead
(`{"error": "SSE stream replay truncated; events were dropped", "skipped": N}`,
as Cog's runtime words it). A reader that does not read never slows the run;
far enough behind, it is dropped with an `error` event (`SSE stream lagged; …`).

The client is harness.SseStream, which records every event with its arrival
time. Runs that must be mid-stream while a test looks wait on a gate file
(tests/models/streamer: `gate` + `hold_at`).
"""

import json
import shutil
import time

import pytest
from harness import (
    MODELS,
    SseStream,
    assert_json_error,
    get_prediction,
    in_background,
    output_chunks,
    output_events,
    output_indexes,
    start_async,
    wait_for_prediction,
    wait_until,
)

SSE = {"Accept": "text/event-stream"}


def spelling(name):
    """Server env that serves class `name` of tests/models/streaming_spellings."""
    return {"COG_PREDICT_TYPE_STUB": f"predict.py:{name}"}


def chunks(n):
    return [f"chunk-{i}" for i in range(n)]


def tokens(n):
    return [f"tok-{i}" for i in range(n)]


def assert_well_formed(events, prediction_id=None):
    """`start` first, `completed` last and only there; returns completed's prediction."""
    names = [e.name for e in events]
    assert names and names[0] == "start", names
    assert names[-1] == "completed" and names.count("completed") == 1, names
    assert "start" not in names[1:], names
    start, final = events[0].json, events[-1].json
    assert start["status"] in ("starting", "processing"), start
    assert start["id"] == final["id"], (start, final)
    if prediction_id is not None:
        assert final["id"] == prediction_id, final
    assert final["status"] in ("succeeded", "failed", "canceled"), final
    return final


def arrival_gaps(events):
    """Seconds between each event's arrival and the next one's."""
    times = [e.received_at for e in events]
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def poll(server, prediction_id):
    """GET /predictions/{id}: the prediction, or None while the request that
    creates it (sent from another thread) has not arrived yet."""
    resp = server.get(f"/predictions/{prediction_id}", timeout=5)
    assert resp.status_code in (200, 404), f"{resp.status_code}: {resp.text[:500]}"
    return resp.json() if resp.status_code == 200 else None


def wait_running(server, prediction_id, outputs=0):
    """Wait until GET shows the prediction processing with `outputs` outputs
    so far; return it."""
    return wait_until(
        lambda: (
            (p := poll(server, prediction_id))
            and p["status"] == "processing"
            and len(p.get("output") or []) >= outputs
            and p
        ),
        10,
        f"{prediction_id} to be processing with {outputs} outputs",
    )


# -- one stream ----------------------------------------------------------------


def test_each_chunk_reaches_the_client_before_the_next_one_is_yielded(start_server):
    server = start_server("streamer")
    interval = 0.2
    stream = SseStream(
        server,
        "POST",
        "/predictions",
        {"input": {"chunks": 10, "interval": interval, "stamp": True}},
    )
    events = stream.wait_ended(timeout=20)
    final = assert_well_formed(events)
    assert final["status"] == "succeeded", final

    outputs = output_events(events)
    assert output_indexes(outputs) == list(range(10)), outputs
    # Each chunk carries time.monotonic() at its yield (same clock here): it
    # must be at the client well before the run's next sleep ends.
    latencies = [e.received_at - float(e.json["chunk"].split("@")[1]) for e in outputs]
    assert max(latencies) < interval, f"chunk delivery latencies (s): {latencies}"
    gaps = arrival_gaps(outputs)
    assert min(gaps) > interval / 2, f"chunks arrived in bursts; gaps (s): {gaps}"
    assert events[-1].received_at - outputs[0].received_at > 8 * interval, events
    assert final["output"] == output_chunks(events)


def test_stream_is_start_then_logs_and_outputs_in_order_then_completed(start_server):
    server = start_server("streamer")
    stream = SseStream(server, "POST", "/predictions", {"input": {"chunks": 3, "log": True}})
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream"), stream.headers
    events = stream.wait_ended()
    final = assert_well_formed(events)

    middle = [(e.name, e.json) for e in events[1:-1]]
    expected = []
    for i in range(3):
        expected += [
            ("log", {"source": "stdout", "data": f"out-{i}\n"}),
            ("log", {"source": "stderr", "data": f"err-{i}\n"}),
            ("output", {"chunk": f"chunk-{i}", "index": i}),
        ]
    assert middle == expected

    assert final["status"] == "succeeded", final
    assert final["output"] == chunks(3), final
    assert final["logs"] == "".join(f"out-{i}\nerr-{i}\n" for i in range(3)), final
    assert final == get_prediction(server, final["id"])


def test_put_with_event_stream_creates_the_prediction_and_streams_it(start_server):
    server = start_server("streamer")
    stream = SseStream(server, "PUT", "/predictions/put-stream-1", {"input": {"chunks": 2}})
    events = stream.wait_ended()
    final = assert_well_formed(events, "put-stream-1")
    assert output_chunks(events) == chunks(2), events
    assert final["status"] == "succeeded" and final["output"] == chunks(2), final


def test_async_generator_streams_each_chunk_as_it_is_yielded(start_server):
    server = start_server("streaming_spellings", env=spelling("CogBare"))
    interval = 0.15
    stream = SseStream(server, "POST", "/predictions", {"input": {"n": 5, "interval": interval}})
    events = stream.wait_ended()
    final = assert_well_formed(events)
    assert final["status"] == "succeeded", final

    outputs = output_events(events)
    assert [(e.json["index"], e.json["chunk"]) for e in outputs] == list(enumerate(tokens(5)))
    gaps = arrival_gaps(outputs)
    assert min(gaps) > interval / 2, f"chunks arrived in bursts; gaps (s): {gaps}"
    assert final["output"] == tokens(5), final


@pytest.mark.parametrize("predictor", ["Called", "CogCalled"])
def test_concatenate_iterator_output_is_the_list_of_its_chunks(start_server, predictor):
    server = start_server("streaming_spellings", env=spelling(predictor))
    plain = server.predict_ok({"n": 4})
    assert plain["status"] == "succeeded", plain
    assert plain["output"] == tokens(4), plain

    events = SseStream(server, "POST", "/predictions", {"input": {"n": 4}}).wait_ended()
    final = assert_well_formed(events)
    assert output_chunks(events) == tokens(4), events
    assert final["output"] == tokens(4), final


@pytest.mark.parametrize("predictor", ["Bare", "Called", "CogBare", "CogCalled"])
def test_every_spelling_of_the_decorator_marks_the_run_streaming(start_server, predictor):
    server = start_server("streaming_spellings", env=spelling(predictor))
    stream = SseStream(server, "POST", "/predictions", {"input": {"n": 3}})
    assert stream.status == 200, (stream.status, stream.body)
    events = stream.wait_ended()
    final = assert_well_formed(events)
    assert [e.json for e in output_events(events)] == [
        {"chunk": token, "index": i} for i, token in enumerate(tokens(3))
    ]
    assert final["status"] == "succeeded" and final["output"] == tokens(3), final
    # Cog's clients learn that a model streams from its schema.
    document = server.get("/openapi.json").json()
    assert document["paths"]["/predictions"]["post"]["x-cog-streaming"] is True


def test_model_not_marked_streaming_answers_406_to_event_stream(start_server):
    server = start_server("streaming_spellings", env=spelling("NotMarked"))
    document = server.get("/openapi.json").json()
    assert "x-cog-streaming" not in document["paths"]["/predictions"]["post"]
    assert_json_error(server.post("/predictions", json={"input": {}}, headers=SSE), 406)
    assert_json_error(server.put("/predictions/refused-1", json={"input": {}}, headers=SSE), 406)
    # Refused before anything was created or run.
    assert server.get("/predictions/refused-1").status_code == 404
    # The same generator, asked for plain JSON, runs as usual.
    plain = server.predict_ok({"n": 3})
    assert plain["status"] == "succeeded" and plain["output"] == tokens(3), plain


def test_generator_without_event_stream_shows_chunks_so_far_then_returns_them_all(
    start_server, gate
):
    server = start_server("streamer")
    body = {"id": "plain-gen-1", "input": {"chunks": 5, "gate": str(gate), "hold_at": 2}}
    reply = in_background(server.post, "/predictions", json=body)
    running = wait_running(server, "plain-gen-1", 2)
    assert running["output"] == chunks(2), running
    gate.open()
    resp = reply.result(timeout=15)
    assert resp.status_code == 200, resp.text[:500]
    final = resp.json()
    assert final["status"] == "succeeded", final
    assert final["output"] == chunks(5), final


def test_generator_failing_midway_completes_failed_and_keeps_its_chunks(start_server):
    server = start_server("streamer")
    stream = SseStream(server, "POST", "/predictions", {"input": {"chunks": 5, "fail_after": 3}})
    events = stream.wait_ended()
    final = assert_well_formed(events)
    assert output_chunks(events) == chunks(3), events
    assert final["status"] == "failed", final
    assert "midway" in (final["error"] or ""), final
    assert final["output"] == chunks(3), f"a failed stream lost its chunks: {final!r}"
    assert get_prediction(server, final["id"]) == final

    plain = server.predict_ok({"chunks": 5, "fail_after": 3})
    assert plain["status"] == "failed" and "midway" in (plain["error"] or ""), plain
    assert plain["output"] == chunks(3), f"a failed generator lost its chunks: {plain!r}"


def test_canceled_stream_ends_with_completed_carrying_canceled(start_server, gate):
    server = start_server("streamer")
    stream = SseStream(
        server,
        "POST",
        "/predictions",
        {"id": "cancel-stream-1", "input": {"chunks": 5, "gate": str(gate), "hold_at": 2}},
    )
    stream.wait_for(lambda events: len(output_events(events)) == 2, what="two chunks")
    assert server.post("/predictions/cancel-stream-1/cancel").status_code == 200
    events = stream.wait_ended()
    final = assert_well_formed(events, "cancel-stream-1")
    assert output_chunks(events) == chunks(2), events
    assert final["status"] == "canceled", final


# -- several readers, re-attach, history ------------------------------------------


def test_several_readers_of_one_prediction_see_the_same_events(start_server, gate):
    server = start_server("streamer")
    body = {"id": "shared-1", "input": {"chunks": 4, "log": True, "gate": str(gate)}}
    creator = SseStream(server, "POST", "/predictions", body)
    creator.wait_for_event("start")
    # Attached while the run waits at its gate, before any chunk.
    others = [SseStream(server, "PUT", "/predictions/shared-1", body) for _ in range(2)]
    for other in others:
        other.wait_for_event("start")
    gate.open()

    seen = [[(e.name, e.data) for e in s.wait_ended()] for s in [creator, *others]]
    final = assert_well_formed(creator.events, "shared-1")
    assert final["status"] == "succeeded" and final["output"] == chunks(4), final
    assert seen[1] == seen[0], "the first attached reader saw other events than the creator"
    assert seen[2] == seen[0], "the second attached reader saw other events than the creator"


def test_reattach_replays_the_history_then_follows_live_events(start_server, gate):
    server = start_server("streamer")
    body = {"input": {"chunks": 6, "log": True, "gate": str(gate), "hold_at": 3}}
    start_async(server, "/predictions/replay-1", **body)
    wait_running(server, "replay-1", 3)

    stream = SseStream(server, "PUT", "/predictions/replay-1", body)
    stream.wait_for(lambda events: len(output_events(events)) == 3, what="the replay")
    opened_at = time.monotonic()
    gate.open()
    events = stream.wait_ended()

    final = assert_well_formed(events, "replay-1")
    assert final["status"] == "succeeded" and final["output"] == chunks(6), final
    # The whole stream exactly once: nothing missed or repeated where the
    # replay hands over to live events.
    expected = []
    for i in range(6):
        expected += [
            ("log", {"source": "stdout", "data": f"out-{i}\n"}),
            ("log", {"source": "stderr", "data": f"err-{i}\n"}),
            ("output", {"chunk": f"chunk-{i}", "index": i}),
        ]
    assert [(e.name, e.json) for e in events[1:-1]] == expected
    replayed = [e for e in events if e.received_at < opened_at]
    assert [e.name for e in replayed] == ["start"] + ["log", "log", "output"] * 3, replayed
    assert all(e.received_at >= opened_at for e in events[len(replayed) :]), events


@pytest.mark.parametrize("history", ["1024", "0"])
def test_reattach_after_the_end_replays_the_stream_and_ends(start_server, history):
    # A finished stream keeps its history, not its live channel: a reader
    # attaching afterwards gets the kept events and the end, never a hang.
    server = start_server("streamer", env={"COG_STREAM_HISTORY_CAPACITY": history})
    body = {"input": {"chunks": 3}}
    start_async(server, "/predictions/ended-1", **body)
    final = wait_for_prediction(server, "ended-1")
    assert final["status"] == "succeeded", final
    for _ in range(2):
        events = SseStream(server, "PUT", "/predictions/ended-1", body).wait_ended()
        if history == "0":
            assert [e.name for e in events] == ["completed"], events
        else:
            assert_well_formed(events, "ended-1")
            assert output_chunks(events) == chunks(3), events
        assert events[-1].json["output"] == chunks(3), events


@pytest.mark.parametrize(
    "held_at, truncated",
    [(4, False), (6, True)],
    ids=["5-events-kept-whole", "7-events-truncated"],
)
def test_reattach_gets_an_error_only_when_the_history_was_truncated(
    start_server, gate, held_at, truncated
):
    server = start_server("streamer", env={"COG_STREAM_HISTORY_CAPACITY": "5"})
    body = {"input": {"chunks": 8, "gate": str(gate), "hold_at": held_at}}
    start_async(server, "/predictions/history-1", **body)
    # `start` plus one `output` per chunk so far.
    wait_running(server, "history-1", held_at)

    stream = SseStream(server, "PUT", "/predictions/history-1", body)
    if truncated:
        events = stream.wait_ended()
        assert [e.name for e in events] == ["error"], events
        # `start` and 6 chunks were published, the last 5 kept: 2 dropped.
        assert events[0].json == {
            "error": "SSE stream replay truncated; events were dropped",
            "skipped": 2,
        }, events
        gate.open()
    else:
        stream.wait_for(lambda events: len(output_events(events)) == held_at, what="the replay")
        gate.open()
        events = stream.wait_ended()
        assert_well_formed(events, "history-1")
        assert output_chunks(events) == chunks(8), events
    # Either way the run itself is untouched.
    final = wait_for_prediction(server, "history-1")
    assert final["status"] == "succeeded" and final["output"] == chunks(8), final


def test_with_no_history_a_late_reader_sees_only_events_after_it_attached(start_server, gate):
    server = start_server("streamer", env={"COG_STREAM_HISTORY_CAPACITY": "0"})
    body = {"input": {"chunks": 5, "gate": str(gate), "hold_at": 3}}
    start_async(server, "/predictions/live-1", **body)
    wait_running(server, "live-1", 3)

    # The reply's head has arrived: the reader is attached.
    stream = SseStream(server, "PUT", "/predictions/live-1", body)
    assert stream.status == 200
    gate.open()
    events = stream.wait_ended()
    assert [e.name for e in events] == ["output", "output", "completed"], events
    assert output_indexes(events) == [3, 4], events
    final = events[-1].json
    assert final["status"] == "succeeded" and final["output"] == chunks(5), final


def test_with_no_history_the_creating_stream_still_gets_every_event(start_server):
    # The stream that creates the prediction is attached before the run
    # starts, so it must see `start` and every chunk even with nothing kept.
    server = start_server("streamer", env={"COG_STREAM_HISTORY_CAPACITY": "0"})
    for attempt in range(20):
        stream = SseStream(server, "POST", "/predictions", {"input": {"chunks": 2}})
        events = stream.wait_ended()
        names = [e.name for e in events]
        assert names == ["start", "output", "output", "completed"], (attempt, events)


def test_a_stalled_reader_neither_slows_the_run_nor_stays_attached(start_server, gate):
    server = start_server("streamer")
    # ~16 MB of events: far more than the socket buffers between the server
    # and a reader that never reads, and more than 1024 events beyond them.
    work = {"chunks": 2000, "size": 8192}
    began = time.monotonic()
    baseline = server.predict_ok(work)
    alone_s = time.monotonic() - began
    assert baseline["status"] == "succeeded" and len(baseline["output"]) == 2000

    body = {"id": "stalled-1", "input": {**work, "gate": str(gate)}}
    reply = in_background(server.post, "/predictions", json=body)
    wait_running(server, "stalled-1")
    # Reads the reply's head, then nothing until the run is over.
    stalled = SseStream(server, "PUT", "/predictions/stalled-1", body, read=False, rcvbuf=4096)
    assert stalled.is_stream, (stalled.status, stalled.body)
    try:
        opened_at = time.monotonic()
        gate.open()
        resp = reply.result(timeout=30)
        with_stalled_s = time.monotonic() - opened_at
        assert resp.status_code == 200, resp.text[:500]
        final = resp.json()
        assert final["status"] == "succeeded" and len(final["output"]) == 2000
        assert with_stalled_s < 2 * alone_s + 1.0, (
            f"with a stalled reader the run took {with_stalled_s:.2f}s, alone {alone_s:.2f}s"
        )

        stalled.resume()
        events = stalled.wait_ended(timeout=30)
        assert events and events[-1].name == "error", [e.name for e in events[-3:]]
        error = events[-1].json
        assert error["error"] == "SSE stream lagged; events were dropped", error
        assert isinstance(error["skipped"], int) and error["skipped"] > 0, error
        assert "completed" not in [e.name for e in events], "a dropped reader got completed"
        indexes = output_indexes(events)
        assert indexes == list(range(len(indexes))), "the events before the drop have gaps"
    finally:
        stalled.close()


def test_a_prebuilt_schema_marked_streaming_makes_the_model_stream(start_server, tmp_path):
    """Images built by Cog's tools carry the schema, marked `x-cog-streaming`,
    and no decorator: the mark is enough, as it is for Cog's own server."""
    marked = start_server("streaming_spellings", env=spelling("Bare"))
    document = marked.get("/openapi.json").json()
    model = tmp_path / "prebuilt_streaming"
    shutil.copytree(MODELS / "streaming_spellings", model)
    (model / ".cog").mkdir()
    (model / ".cog" / "openapi_schema.json").write_text(json.dumps(document))

    server = start_server(model, env=spelling("NotMarked"))
    stream = SseStream(server, "POST", "/predictions", {"input": {"n": 2}})
    assert stream.status == 200, (stream.status, stream.body)
    final = assert_well_formed(stream.wait_ended())
    assert final["status"] == "succeeded" and final["output"] == tokens(2), final
