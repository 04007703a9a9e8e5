"""Webhooks: the server POSTs the whole prediction to the request's `webhook`:
`start` first, then `output`/`logs` as they happen (at most one per
COG_THROTTLE_RESPONSE_INTERVAL, default 0.5 s, always the latest state), then
exactly one `completed`, retried with backoff until the receiver takes it.
`webhook_events_filter` picks the events; WEBHOOK_AUTH_TOKEN becomes a bearer
token; W3C trace context headers of the creating request are forwarded.

The receiver (harness.WebhookReceiver) records every call it gets.
"""

import time

import pytest
from harness import (
    fail_first,
    log_lines,
    parse_timestamp,
    start_async,
    wait_for_prediction,
    wait_until,
)

# Long enough for a (wrong) extra webhook after `completed` to show up.
SETTLE_S = 0.5


def progress_calls(calls):
    """The calls that are neither `start` nor `completed`."""
    return [c for c in calls if c.status == "processing"]


def assert_prefix(part, whole, what):
    if part is None:
        return
    assert whole[: len(part)] == part, f"{what} {part!r} is not a prefix of {whole!r}"


def test_webhooks_arrive_as_start_then_progress_then_exactly_one_completed(
    start_server, webhook_receiver
):
    server = start_server("chatty", env={"COG_THROTTLE_RESPONSE_INTERVAL": "0.1"})
    url = webhook_receiver.url("/hook")
    accepted = start_async(server, input={"outputs": 3, "interval": 0.3}, webhook=url)
    webhook_receiver.wait_for_completed("/hook")
    time.sleep(SETTLE_S)
    calls = webhook_receiver.calls_to("/hook")
    assert calls == webhook_receiver.calls, "calls went to another path"

    for call in calls:
        assert call.method == "POST", call
        assert call.headers.get("content-type", "").startswith("application/json"), call.headers
        assert isinstance(call.body, dict) and call.body.get("id") == accepted["id"], call.body
        for key in ("id", "status", "input", "output", "logs", "created_at"):
            assert key in call.body, f"webhook body lacks {key!r}: {call.body!r}"

    start, *progress, completed = calls
    assert start.status == "starting", calls
    assert not start.body.get("output"), start.body
    assert not start.body.get("logs"), start.body
    # The input as sent, with the model's defaults filled in for the rest.
    assert start.body["input"].items() >= {"outputs": 3, "interval": 0.3}.items()

    assert [c for c in calls if c.is_terminal] == [completed], calls
    final = completed.body
    assert final["status"] == "succeeded", final
    assert final["output"] == ["out-0", "out-1", "out-2"], final
    assert log_lines(final) == ["line-0", "line-1", "line-2"], final["logs"]
    assert parse_timestamp(final["completed_at"]) >= parse_timestamp(final["started_at"])
    assert final == wait_for_prediction(server, accepted["id"])

    # Progress as it happened: processing, each a prefix of the final state,
    # never going backwards.
    assert progress, f"no output/logs webhooks: {calls!r}"
    assert all(c.status == "processing" for c in progress), progress
    previous_output, previous_logs = [], ""
    for call in progress:
        output, logs = call.body.get("output") or [], call.body.get("logs") or ""
        assert_prefix(output, final["output"], "output")
        assert final["logs"].startswith(logs), (logs, final["logs"])
        assert output[: len(previous_output)] == previous_output, progress
        assert logs.startswith(previous_logs), progress
        previous_output, previous_logs = output, logs
    arrivals = [c.received_at for c in calls]
    assert arrivals == sorted(arrivals)


def test_output_webhooks_carry_the_outputs_so_far(start_server, webhook_receiver):
    server = start_server("chatty", env={"COG_THROTTLE_RESPONSE_INTERVAL": "0.1"})
    # 0.4 s between outputs and a 0.1 s throttle: each output gets a webhook
    # of its own before the next one is yielded.
    start_async(
        server,
        input={"outputs": 3, "interval": 0.4},
        webhook=webhook_receiver.url(),
        webhook_events_filter=["output", "completed"],
    )
    calls = webhook_receiver.wait_for_completed()
    progress = progress_calls(calls)
    seen = [c.body.get("output") for c in progress]
    assert ["out-0"] in seen and ["out-0", "out-1"] in seen, (
        f"output webhooks should hold the outputs yielded so far; they held {seen!r}"
    )
    assert calls[-1].body["output"] == ["out-0", "out-1", "out-2"], calls[-1].body


@pytest.mark.parametrize(
    "events",
    [["start", "completed"], ["completed"], ["output", "logs", "completed"]],
    ids=["start+completed", "completed-only", "no-start"],
)
def test_webhook_events_filter_limits_what_is_sent(start_server, webhook_receiver, events):
    server = start_server("chatty", env={"COG_THROTTLE_RESPONSE_INTERVAL": "0.1"})
    start_async(
        server,
        input={"outputs": 3, "interval": 0.3},
        webhook=webhook_receiver.url(),
        webhook_events_filter=events,
    )
    calls = webhook_receiver.wait_for_completed()
    time.sleep(SETTLE_S)
    calls = webhook_receiver.calls_to("/webhook")
    statuses = [c.status for c in calls]

    assert statuses[-1] == "succeeded", calls
    assert sum(c.is_terminal for c in calls) == 1, calls
    if events == ["start", "completed"]:
        assert statuses == ["starting", "succeeded"], calls
    elif events == ["completed"]:
        assert statuses == ["succeeded"], calls
    else:
        assert "starting" not in statuses, calls
        assert progress_calls(calls), f"no output/logs webhooks: {calls!r}"
        assert all(c.body.get("output") or c.body.get("logs") for c in calls), calls


@pytest.mark.parametrize("interval", [None, 2.0], ids=["default-0.5s", "env-2s"])
def test_logs_webhooks_are_throttled_and_the_last_state_holds_every_line(
    start_server, webhook_receiver, interval
):
    env = {} if interval is None else {"COG_THROTTLE_RESPONSE_INTERVAL": str(interval)}
    interval = interval or 0.5
    server = start_server("chatty", env=env)
    lines = 1000
    prediction = server.post(
        "/predictions",
        json={
            "input": {"outputs": 0, "flood": lines, "flood_seconds": 1.0},
            "webhook": webhook_receiver.url(),
        },
        timeout=30,
    ).json()
    assert prediction["status"] == "succeeded", prediction
    calls = webhook_receiver.wait_for_completed()
    time.sleep(SETTLE_S)
    calls = webhook_receiver.calls_to("/webhook")

    expected = [f"flood-{j}" for j in range(lines)]
    completed = [c for c in calls if c.is_terminal]
    assert len(completed) == 1, calls
    assert log_lines(completed[0].body) == expected
    assert completed[0].body == prediction

    progress = progress_calls(calls)
    runtime = (
        parse_timestamp(prediction["completed_at"]) - parse_timestamp(prediction["started_at"])
    ).total_seconds()
    bound = int(runtime / interval) + 2
    assert 1 <= len(progress) <= bound, (
        f"{len(progress)} logs webhooks for a {runtime:.2f}s run at one per {interval}s "
        f"(at most {bound} expected)"
    )
    gaps = [b.received_at - a.received_at for a, b in zip(progress, progress[1:], strict=False)]
    assert all(gap >= interval * 0.8 for gap in gaps), f"gaps between webhooks: {gaps}"
    for call in progress:
        assert completed[0].body["logs"].startswith(call.body["logs"]), call


def test_completed_webhook_is_retried_until_the_receiver_takes_it(start_server, webhook_receiver):
    server = start_server("chatty")
    webhook_receiver.respond = fail_first(2, 500, matching=lambda call: call.is_terminal)
    prediction = server.post(
        "/predictions",
        json={"input": {"outputs": 1, "interval": 0}, "webhook": webhook_receiver.url()},
        timeout=30,
    ).json()
    assert prediction["status"] == "succeeded", prediction

    webhook_receiver.wait_for_completed(timeout=20)
    time.sleep(SETTLE_S)
    calls = webhook_receiver.calls_to("/webhook")
    completed = [c for c in calls if c.is_terminal]
    assert [c.answered for c in completed] == [500, 500, 200], calls
    assert all(c.body == prediction for c in completed), completed
    # With a pause (backoff) between tries.
    gaps = [b.received_at - a.received_at for a, b in zip(completed, completed[1:], strict=False)]
    assert all(gap >= 0.1 for gap in gaps), f"retries came {gaps} s apart"
    # `start` was taken the first time and not sent again.
    assert [c.status for c in calls if c.status == "starting"] == ["starting"], calls


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
def test_completed_webhook_carries_failed_and_canceled_outcomes(
    start_server, webhook_receiver, tmp_path, outcome
):
    server = start_server("cancellable")
    started = tmp_path / "started"
    mode = "no-such-mode" if outcome == "failed" else "sleep"
    accepted = start_async(
        server,
        "/predictions/hooked",
        input={"mode": mode, "seconds": 60, "started": str(started)},
        webhook=webhook_receiver.url(),
    )
    if outcome == "canceled":
        wait_until(started.exists, 10, "the run to start")
        assert server.post("/predictions/hooked/cancel").status_code == 200
    calls = webhook_receiver.wait_for_completed()
    time.sleep(SETTLE_S)
    calls = webhook_receiver.calls_to("/webhook")
    assert calls[0].status == "starting", calls
    completed = [c for c in calls if c.is_terminal]
    assert len(completed) == 1 and completed[0] is calls[-1], calls
    assert completed[0].status == outcome, completed[0].body
    assert completed[0].body["id"] == accepted["id"]
    if outcome == "failed":
        assert "no-such-mode" in (completed[0].body.get("error") or ""), completed[0].body


def test_webhooks_carry_the_bearer_token_only_when_it_is_set(start_server, webhook_receiver):
    with_token = start_server("chatty", env={"WEBHOOK_AUTH_TOKEN": "s3cret-token"})
    without = start_server("chatty")
    for server, path in ((with_token, "/with"), (without, "/without")):
        resp = server.post(
            "/predictions",
            json={"input": {"outputs": 1, "interval": 0}, "webhook": webhook_receiver.url(path)},
            timeout=30,
        )
        assert resp.json()["status"] == "succeeded", resp.text
        webhook_receiver.wait_for_completed(path)

    with_calls = webhook_receiver.calls_to("/with")
    assert with_calls and all(
        c.headers.get("authorization") == "Bearer s3cret-token" for c in with_calls
    ), [c.headers for c in with_calls]
    without_calls = webhook_receiver.calls_to("/without")
    assert without_calls and all("authorization" not in c.headers for c in without_calls), [
        c.headers for c in without_calls
    ]


def test_trace_context_of_the_creating_request_is_forwarded_on_its_webhooks(
    start_server, webhook_receiver
):
    server = start_server("chatty")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    resp = server.post(
        "/predictions",
        json={"input": {"outputs": 2, "interval": 0.1}, "webhook": webhook_receiver.url("/t")},
        headers={
            "Prefer": "respond-async",
            "traceparent": traceparent,
            "tracestate": tracestate,
        },
    )
    assert resp.status_code == 202, resp.text
    traced = webhook_receiver.wait_for_completed("/t")
    # Another prediction, without trace context, gets none.
    server.post(
        "/predictions",
        json={"input": {"outputs": 1, "interval": 0}, "webhook": webhook_receiver.url("/u")},
        headers={"Prefer": "respond-async"},
    )
    untraced = webhook_receiver.wait_for_completed("/u")

    assert len(traced) >= 2, traced
    for call in traced:
        assert call.headers.get("traceparent") == traceparent, call.headers
        assert call.headers.get("tracestate") == tracestate, call.headers
    for call in untraced:
        assert "traceparent" not in call.headers, call.headers
        assert "tracestate" not in call.headers, call.headers
