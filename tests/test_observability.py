"""What the server tells its operators: Prometheus metrics at GET /metrics
(parsed as Prometheus parses them), and traces of each prediction exported
over OTLP/HTTP when an endpoint is configured. The per-prediction log lines
are checked in test_server_logging.py.
"""

from __future__ import annotations

import base64

from harness import fail_first, start_async, wait_for_prediction, wait_until
from prometheus_client.parser import text_string_to_metric_families


def scrape(server, **kwargs) -> dict:
    """GET /metrics, parsed: {(sample name, sorted labels): value}, plus the
    declared type of each family under ("TYPE", family name)."""
    resp = server.get("/metrics", timeout=5, **kwargs)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict = {}
    for family in text_string_to_metric_families(resp.text):
        samples[("TYPE", family.name)] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def predictions(samples: dict, status: str) -> float:
    return samples[("cogd_predictions_total", (("status", status),))]


def value(samples: dict, name: str) -> float:
    return samples[(name, ())]


def test_metrics_follow_predictions_slots_webhooks_and_restarts(
    start_server, gate, webhook_receiver
):
    server = start_server("basic")
    before = scrape(server)
    assert before[("TYPE", "cogd_predictions")] == "counter"
    assert before[("TYPE", "cogd_prediction_run_seconds")] == "histogram"
    assert before[("TYPE", "cogd_prediction_queue_wait_seconds")] == "histogram"
    assert before[("TYPE", "cogd_slots_busy")] == "gauge"
    assert value(before, "cogd_slots") == 1
    assert value(before, "cogd_slots_busy") == 0
    assert value(before, "cogd_setup_duration_seconds") > 0

    # A success whose completed webhook fails once before it is delivered.
    webhook_receiver.respond = fail_first(1)
    done = server.post(
        "/predictions",
        json={
            "input": {"mode": "ok"},
            "webhook": webhook_receiver.url(),
            "webhook_events_filter": ["completed"],
        },
    ).json()
    assert done["status"] == "succeeded"
    assert server.predict_ok({"mode": "raise"})["status"] == "failed"

    # A run held open: its slot is busy until it is cancelled.
    held = start_async(server, input={"gate": str(gate)})
    wait_for_prediction(server, held["id"], "processing")
    assert value(scrape(server), "cogd_slots_busy") == 1
    assert server.post(f"/predictions/{held['id']}/cancel").status_code == 200
    assert wait_for_prediction(server, held["id"])["status"] == "canceled"

    # The worker dies under a run: that run fails and the worker comes back.
    assert server.predict_ok({"mode": "exit"})["status"] == "failed"
    server.wait_for_status("READY", timeout=60)

    webhook_receiver.wait_for_completed()
    after = wait_until(
        lambda: (s := scrape(server)) and value(s, "cogd_webhook_deliveries_total") >= 1 and s,
        10,
        "the webhook delivery to be counted",
    )
    assert predictions(after, "succeeded") - predictions(before, "succeeded") == 1
    assert predictions(after, "failed") - predictions(before, "failed") == 2
    assert predictions(after, "canceled") - predictions(before, "canceled") == 1
    for histogram in ("cogd_prediction_run_seconds", "cogd_prediction_queue_wait_seconds"):
        count = value(after, f"{histogram}_count") - value(before, f"{histogram}_count")
        assert count == 4, histogram
        assert after[(f"{histogram}_bucket", (("le", "+Inf"),))] == value(
            after, f"{histogram}_count"
        )
    assert value(after, "cogd_prediction_run_seconds_sum") > 0
    assert value(after, "cogd_slots_busy") == 0
    assert value(after, "cogd_slots") == 1
    assert value(after, "cogd_webhook_deliveries_total") == 1
    assert value(after, "cogd_webhook_failures_total") == 1
    assert value(after, "cogd_worker_restarts_total") == 1


def test_metrics_need_the_api_token_when_one_is_set(start_server):
    server = start_server("basic", env={"COG_API_TOKEN": "s3cret"})
    assert server.get("/metrics").status_code == 401
    samples = scrape(server, headers={"Authorization": "Bearer s3cret"})
    assert predictions(samples, "succeeded") == 0


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


def test_a_prediction_is_traced_under_the_callers_traceparent(start_server, otlp_collector):
    server = start_server(
        "file_inputs",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.endpoint},
    )
    data = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    resp = server.post(
        "/predictions",
        json={"id": "traced-1", "input": {"file": data}},
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"},
    )
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text
    # Stopping flushes what the exporter still holds.
    server.terminate()
    assert server.wait_exit(timeout=15) == 0

    spans = otlp_collector.wait_for_spans(
        lambda spans: any(s.name == "prediction" for s in spans), timeout=5
    )
    assert otlp_collector.paths and set(otlp_collector.paths) == {"/v1/traces"}
    resource = otlp_collector.spans[0][0]
    assert resource.get("service.name") == "cogd"
    by_name = {s.name: s for s in spans}
    prediction = by_name["prediction"]
    assert prediction.trace_id.hex() == TRACE_ID
    assert prediction.parent_span_id.hex() == CALLER_SPAN_ID
    attributes = {a.key: a.value for a in prediction.attributes}
    assert attributes["prediction_id"].string_value == "traced-1"
    assert attributes["cog.prediction.status"].string_value == "succeeded"
    for phase in ("validate", "download", "run"):
        child = by_name.get(phase)
        assert child is not None, f"no {phase} span among {sorted(by_name)}"
        assert child.trace_id.hex() == TRACE_ID, phase
        assert child.parent_span_id == prediction.span_id, phase
        assert prediction.start_time_unix_nano <= child.start_time_unix_nano, phase
        assert child.end_time_unix_nano <= prediction.end_time_unix_nano, phase
    assert by_name["download"].end_time_unix_nano <= by_name["run"].start_time_unix_nano


def test_sending_file_outputs_is_an_upload_span_after_the_run(start_server, otlp_collector):
    server = start_server(
        "file_outputs",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.endpoint,
            "COG_PREDICT_TYPE_STUB": "predict.py:one_path",
        },
    )
    resp = server.post("/predictions", json={"id": "traced-upload", "input": {}})
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text
    server.terminate()
    assert server.wait_exit(timeout=15) == 0

    spans = otlp_collector.wait_for_spans(
        lambda spans: any(s.name == "prediction" for s in spans), timeout=5
    )
    by_name = {s.name: s for s in spans}
    prediction, upload = by_name["prediction"], by_name.get("upload")
    assert upload is not None, f"no upload span among {sorted(by_name)}"
    assert upload.parent_span_id == prediction.span_id
    assert prediction.start_time_unix_nano <= upload.start_time_unix_nano
    assert upload.end_time_unix_nano <= prediction.end_time_unix_nano
