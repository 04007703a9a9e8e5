"""Custom metrics (SPEC §2, §3, §5): `self.record_metric(name, value, mode)`,
`self.scope.metrics[...]` and `cog.current_scope()` inside a run (and in tasks
it spawns) record metrics that land in the prediction's `metrics` beside
`predict_time`: in the response, in GET, in webhooks, and as SSE `metric`
events the moment they are recorded. Names follow SPEC §2's rules (a bad or
reserved one raises ValueError), a key keeps its type until deleted (else
TypeError), `None` and `del` delete, and outside a run recording does nothing.
`current_scope().context` is the request's `context`.

The model is tests/models/metrics: `Predictor` runs the scenario named by its
`scenario` input and returns what it saw, including the exceptions it caught.
"""

from harness import (
    SseStream,
    get_prediction,
    start_async,
    wait_for_prediction,
    wait_until,
)

ASYNC = {"COG_PREDICT_TYPE_STUB": "predict.py:AsyncPredictor"}
STREAMING = {"COG_PREDICT_TYPE_STUB": "predict.py:StreamingPredictor"}


def custom(metrics):
    """The metrics without predict_time, after checking that it is there."""
    assert isinstance(metrics.get("predict_time"), float), metrics
    return {k: v for k, v in metrics.items() if k != "predict_time"}


def run(server, scenario, context=None):
    body = {"input": {"scenario": scenario}}
    if context is not None:
        body["context"] = context
    resp = server.post("/predictions", json=body)
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:1000]}"
    prediction = resp.json()
    assert prediction["status"] == "succeeded", prediction
    return prediction


# -- recording ---------------------------------------------------------------------


def test_replace_incr_and_append_land_in_the_response_beside_predict_time(start_server):
    server = start_server("metrics")
    prediction = run(server, "modes")
    expected = {"label": "second", "tokens": 3.5, "steps": ["load", "run"], "flag": True}
    assert custom(prediction["metrics"]) == expected
    # The run read back the same values through self.scope.metrics.
    assert prediction["output"] == expected
    assert get_prediction(server, prediction["id"])["metrics"] == prediction["metrics"]


def test_dotted_names_nest_and_read_back(start_server):
    server = start_server("metrics")
    prediction = run(server, "nested")
    timing = {"preprocess": 0.25, "inference": 1.5, "gpu": {"util": 80, "calls": 2}}
    assert custom(prediction["metrics"]) == {"timing": timing}
    assert prediction["output"] == {
        "timing": timing,
        "gpu": {"util": 80, "calls": 2},
        "util": 80,
        "missing": "absent",
        "in": [True, False],
    }


def test_names_that_break_the_rules_raise_value_error_in_cogs_words(start_server):
    server = start_server("metrics")
    seen = run(server, "errors")["output"]
    for name, error in seen["bad_names"].items():
        assert error is not None, f"{name!r} was accepted"
        assert error[0] == "ValueError", (name, error)
    messages = {name: error[1] for name, error in seen["bad_names"].items()}
    assert messages == {
        "": "metric name must not be empty",
        "1abc": "metric name segment '1abc' must start with a letter",
        "_invalid": "metric name segment '_invalid' must start with a letter",
        "a_": "metric name segment 'a_' must end with a letter or digit",
        "a__b": "metric name segment 'a__b' must not contain consecutive underscores",
        "a-b": "metric name segment 'a-b' contains invalid character '-'",
        ".a": "metric name must not start with a dot",
        "a..b": "metric name must not contain empty segments (consecutive dots)",
        "a.": "metric name must not end with a dot",
        "a.b.c.d.e": "metric name must have at most 4 dot-separated segments (got 5)",
        "x" * 129: "metric name must be 128 characters or fewer (got 129 characters)",
    }
    assert seen["longest_ok"] is None, "a 128-character name is allowed"


def test_predict_time_and_the_cog_namespace_are_reserved(start_server):
    server = start_server("metrics")
    prediction = run(server, "errors")
    assert prediction["output"]["reserved"] == {
        "predict_time": ["ValueError", "'predict_time' is reserved by the runtime"],
        "predict_time.x": ["ValueError", "'predict_time' is reserved by the runtime"],
        "cog.version": ["ValueError", "the 'cog.' prefix is reserved for system metrics"],
    }
    assert "cog" not in prediction["metrics"]
    assert isinstance(prediction["metrics"]["predict_time"], float)


def test_a_type_change_raises_type_error_and_changes_nothing(start_server):
    server = start_server("metrics")
    prediction = run(server, "errors")
    seen = prediction["output"]
    type_errors = [
        "type_change",
        "bool_for_number",
        "incr_a_str",
        "incr_on_str",
        "append_to_number",
        "leaf_as_parent",
        "parent_as_leaf",
        "not_json",
    ]
    for case in type_errors:
        assert seen[case] is not None and seen[case][0] == "TypeError", (case, seen[case])
    assert "is a number, not a str" in seen["type_change"][1]
    assert "delete" in seen["type_change"][1], "the message says how to change a type"
    assert "cannot hold" in seen["leaf_as_parent"][1]
    assert seen["nan"] is not None and seen["nan"][0] == "ValueError", seen["nan"]
    # A mode that is none: TypeError, in Cog's words.
    assert seen["bad_mode"] == [
        "TypeError",
        "Invalid metric mode: 'decr'. Expected 'replace', 'incr', or 'append'.",
    ]

    # Every refused record left the metrics as they were, in the run and on the server.
    expected = {"count": 1, "nest": {"leaf": 1}, "y" * 128: 1, "s": "x"}
    assert seen["metrics"] == expected
    assert custom(prediction["metrics"]) == expected


def test_none_and_del_delete_and_a_deleted_metric_may_change_type(start_server):
    server = start_server("metrics")
    prediction = run(server, "delete")
    # a: deleted then recorded as a str; b.c deleted, b.d kept; e deleted;
    # gone.deep.leaf deleted along with the parents it left empty.
    expected = {"b": {"d": 3}, "a": "now a string"}
    assert prediction["output"] == expected
    assert custom(prediction["metrics"]) == expected


def test_metrics_start_empty_for_each_prediction(start_server):
    server = start_server("metrics")
    run(server, "modes")
    prediction = run(server, "context")
    assert custom(prediction["metrics"]) == {}


def test_recording_outside_a_run_is_a_silent_no_op(start_server):
    server = start_server("metrics")
    # setup() recorded (even with a bad name and value) and read its scope.
    assert server.health()["setup"]["status"] == "succeeded"
    prediction = run(server, "setup")
    assert prediction["output"] == {"context": {}, "metrics": {}}
    assert "setup_metric" not in prediction["metrics"]


def test_a_failed_prediction_keeps_what_it_recorded(start_server):
    server = start_server("metrics")
    prediction = server.predict_ok({"scenario": "fail"})
    assert prediction["status"] == "failed", prediction
    assert custom(prediction["metrics"]) == {"recorded": True}


# -- context and tasks -----------------------------------------------------------


def test_current_scope_context_is_the_requests_context(start_server):
    server = start_server("metrics")
    context = {"user": "u-1", "trace": "abc"}
    prediction = run(server, "context", context)
    assert prediction["output"] == {"scope": context, "self": context}
    assert run(server, "context")["output"] == {"scope": {}, "self": {}}


def test_tasks_a_run_spawns_record_into_its_prediction(start_server):
    server = start_server("metrics", env=ASYNC)
    context = {"tenant": "t"}
    resp = server.post("/predictions", json={"input": {}, "context": context})
    prediction = resp.json()
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == {"contexts": [context] * 3, "by_task": ["t0", "t1", "t2"]}
    metrics = custom(prediction["metrics"])
    assert metrics["hits"] == 3
    assert sorted(metrics["by_task"]) == ["t0", "t1", "t2"]


def test_a_task_that_outlives_its_run_records_nothing_anywhere(start_server):
    server = start_server("metrics", env=ASYNC)
    # The first run leaves a task that records "late" 0.3 s after it returns:
    # while the second run (in the same slot) is in progress.
    first = server.predict_ok({"lingering": 0.3})
    second = server.predict_ok({"lingering": 30.0, "hold": 1.0})
    assert second["status"] == "succeeded", second
    for prediction in (first, second):
        assert "late" not in get_prediction(server, prediction["id"])["metrics"]


# -- where metrics are seen -------------------------------------------------------


def test_metrics_are_visible_while_the_run_is_still_going(start_server, gate):
    server = start_server("metrics")
    accepted = start_async(server, input={"scenario": "hold", "gate": str(gate)})
    running = wait_until(
        lambda: (p := get_prediction(server, accepted["id"]))["metrics"].get("stage") == 1 and p,
        10,
        "the first metric to reach the server",
    )
    assert running["status"] == "processing", running
    gate.open()
    final = wait_for_prediction(server, accepted["id"])
    assert custom(final["metrics"]) == {"stage": 2}


def test_webhooks_carry_the_metrics(start_server, webhook_receiver):
    server = start_server("metrics")
    start_async(server, input={"scenario": "modes"}, webhook=webhook_receiver.url())
    calls = webhook_receiver.wait_for_completed()
    final = calls[-1].body
    assert final["status"] == "succeeded", final
    assert custom(final["metrics"]) == {
        "label": "second",
        "tokens": 3.5,
        "steps": ["load", "run"],
        "flag": True,
    }


def test_the_incr_mode_may_be_spelled_increment_as_in_cog(start_server):
    server = start_server("metrics")
    prediction = run(server, "increment")
    assert prediction["output"] == {"tokens": 4}
    assert custom(prediction["metrics"]) == {"tokens": 4}


def test_a_stream_sends_each_metric_as_an_event_when_it_is_recorded(start_server):
    server = start_server("metrics", env=STREAMING)
    stream = SseStream(server, "POST", "/predictions", {"input": {"chunks": 3}})
    events = stream.wait_ended()
    names = [e.name for e in events]
    assert names[0] == "start" and names[-1] == "completed", names

    # Recorded before each yield, so each metric event comes before its chunk.
    middle = [(e.name, e.json) for e in events[1:-1]]
    expected = []
    for i in range(3):
        expected += [
            # `incr` is written `increment`, as Cog's runtime writes it.
            ("metric", {"name": "chunks", "value": 1, "mode": "increment"}),
            ("output", {"chunk": f"c{i}", "index": i}),
        ]
    expected.append(("metric", {"name": "done", "value": True, "mode": "replace"}))
    assert middle == expected

    final = events[-1].json
    assert final["status"] == "succeeded", final
    assert custom(final["metrics"]) == {"chunks": 3, "done": True}
