"""Dynamic batching: a `@cog.batch` model is called once for several
predictions, each keeping its own id, status, output, error, logs, metrics
and webhooks.

The model is tests/models/batched (`max_size=4`): each call appends its size
and texts to the file its first member's `log` input names, so a test sees
exactly which batches ran; `gate` holds a call open. tests/models/batched_async
is an async one with two slots.
"""

import base64
import json
import threading
import time
from pathlib import Path

import pytest
from harness import (
    EXAMPLES,
    assert_json_error,
    get_prediction,
    in_background,
    log_lines,
    start_async,
    wait_for_prediction,
    wait_until,
)


def batches(log: Path) -> list[dict]:
    """The batches the model recorded, in the order they ran."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def predict_together(server, inputs, timeout=30):
    """One POST /predictions per input at the same instant; the responses in order."""
    barrier = threading.Barrier(len(inputs))

    def send(payload):
        barrier.wait(timeout=10)
        return server.predict(payload, timeout=timeout)

    futures = [in_background(send, payload) for payload in inputs]
    return [f.result(timeout=timeout + 10) for f in futures]


def test_concurrent_predictions_run_as_one_batch_each_with_its_own_result(start_server, tmp_path):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})
    log = tmp_path / "batches.jsonl"
    inputs = [{"text": f"t{i}", "log": str(log)} for i in range(4)]
    responses = predict_together(server, inputs)

    assert [b["size"] for b in batches(log)] == [4]
    assert sorted(batches(log)[0]["texts"]) == ["t0", "t1", "t2", "t3"]
    ids = set()
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, resp.text
        prediction = resp.json()
        assert prediction["status"] == "succeeded", prediction
        assert prediction["output"] == {"text": f"t{i}:4", "file": None}
        assert prediction["metrics"]["batch_size"] == 4
        assert prediction["metrics"]["predict_time"] > 0
        # A line printed by the call is in every member's logs.
        assert any(line.startswith("batch:4:") for line in log_lines(prediction)), prediction
        assert prediction["started_at"] and prediction["completed_at"]
        ids.add(prediction["id"])
    assert len(ids) == 4
    # Prometheus sees one batch of four, and how long it waited to fill.
    metrics = server.get("/metrics").text
    assert "cogd_batch_size_count 1\n" in metrics, metrics
    assert "cogd_batch_size_sum 4\n" in metrics, metrics
    assert "cogd_batch_wait_seconds_count 1\n" in metrics, metrics


def test_batches_never_exceed_max_size(start_server, tmp_path):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "200", "COG_QUEUE_SIZE": "8"})
    log = tmp_path / "batches.jsonl"
    responses = predict_together(server, [{"text": f"t{i}", "log": str(log)} for i in range(10)])
    for resp in responses:
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "succeeded", resp.json()
    sizes = [b["size"] for b in batches(log)]
    assert sum(sizes) == 10, sizes
    assert max(sizes) <= 4, sizes
    assert len(sizes) >= 3, sizes
    # Each member's output names the size of the batch it was in.
    for resp in responses:
        prediction = resp.json()
        assert prediction["output"]["text"].endswith(f":{prediction['metrics']['batch_size']}")


def test_cog_max_batch_size_wins_over_the_decorator(start_server, tmp_path):
    env = {"COG_MAX_BATCH_SIZE": "2", "COG_BATCH_WAIT_MS": "300", "COG_QUEUE_SIZE": "4"}
    server = start_server("batched", env=env)
    log = tmp_path / "batches.jsonl"
    responses = predict_together(server, [{"text": f"t{i}", "log": str(log)} for i in range(4)])
    for resp in responses:
        assert resp.json()["status"] == "succeeded", resp.text
    assert [b["size"] for b in batches(log)] == [2, 2]


def test_admission_takes_max_size_times_slots_before_refusing(start_server, gate, tmp_path):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "0"})
    started = tmp_path / "started"
    # One call holds the one slot; four more fill the next batch's places.
    first = start_async(server, input={"text": "a", "gate": str(gate), "started": str(started)})
    wait_until(started.exists, 10, "the first batch to start")
    waiting = [start_async(server, input={"text": f"w{i}"}) for i in range(3)]
    # 4 places (max_size 4 × 1 slot): the first and three waiting hold them.
    assert_json_error(server.predict({"text": "over"}), 409)
    gate.open()
    for p in [first, *waiting]:
        assert wait_for_prediction(server, p["id"])["status"] == "succeeded"


def test_a_lone_request_waits_at_most_max_wait(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "300"})
    server.predict_ok({"text": "warm"})
    started = time.monotonic()
    prediction = server.predict_ok({"text": "lone"})
    elapsed = time.monotonic() - started
    assert prediction["output"]["text"] == "lone:1"
    assert 0.3 <= elapsed < 0.8, elapsed


def test_a_lone_request_goes_at_once_with_no_wait(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "0"})
    server.predict_ok({"text": "warm"})
    times = []
    for i in range(5):
        started = time.monotonic()
        assert server.predict_ok({"text": f"n{i}"})["output"]["text"] == f"n{i}:1"
        times.append(time.monotonic() - started)
    # The model's own wait (50 ms) is overridden: nothing waits for a second.
    assert min(times) < 0.04, times


def test_an_exception_in_the_returned_list_fails_its_prediction_alone(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})
    responses = predict_together(
        server, [{"text": "good1"}, {"text": "bad", "mode": "fail"}, {"text": "good2"}]
    )
    good1, bad, good2 = (r.json() for r in responses)
    assert bad["status"] == "failed", bad
    assert bad["error"] == "ValueError: bad bad"
    assert bad["metrics"]["batch_size"] == 3
    for good, text in ((good1, "good1"), (good2, "good2")):
        assert good["status"] == "succeeded", good
        assert good["output"]["text"] == f"{text}:3"


def test_a_raised_exception_fails_the_whole_batch(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})
    responses = predict_together(server, [{"text": "a"}, {"text": "b", "mode": "raise"}])
    for resp in responses:
        prediction = resp.json()
        assert prediction["status"] == "failed", prediction
        assert prediction["error"] == "RuntimeError: the batch broke"
        assert "Traceback" in prediction["logs"]


def test_a_list_of_the_wrong_length_fails_every_member_saying_so(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})
    responses = predict_together(server, [{"text": "a"}, {"text": "b", "mode": "short"}])
    for resp in responses:
        prediction = resp.json()
        assert prediction["status"] == "failed", prediction
        assert "must return a list of one output per prediction" in prediction["error"]
        assert "returned 1 output for a batch of 2" in prediction["error"]


def test_a_member_canceled_while_it_waits_never_runs(start_server, gate, tmp_path):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "0", "COG_QUEUE_SIZE": "2"})
    log = tmp_path / "batches.jsonl"
    started = tmp_path / "started"
    first = start_async(
        server, input={"text": "a", "gate": str(gate), "started": str(started), "log": str(log)}
    )
    wait_until(started.exists, 10, "the first batch to start")
    waiting = start_async(server, input={"text": "w", "log": str(log)})
    assert server.post(f"/predictions/{waiting['id']}/cancel").status_code == 200
    assert wait_for_prediction(server, waiting["id"], timeout=5)["status"] == "canceled"
    gate.open()
    assert wait_for_prediction(server, first["id"])["status"] == "succeeded"
    server.predict_ok({"text": "after", "log": str(log)})
    assert [b["texts"] for b in batches(log)] == [["a"], ["after"]]


def test_a_member_canceled_while_its_batch_runs_ends_at_once_and_the_others_go_on(
    start_server, gate, tmp_path
):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "300"})
    started = tmp_path / "started"
    common = {"gate": str(gate), "started": str(started)}
    a = start_async(server, id="member-a", input={"text": "a", **common})
    b = start_async(server, id="member-b", input={"text": "b", **common})
    wait_until(started.exists, 10, "the batch to start")
    assert server.post(f"/predictions/{a['id']}/cancel").status_code == 200
    canceled = wait_for_prediction(server, a["id"], timeout=3)
    assert canceled["status"] == "canceled", canceled
    assert canceled["output"] is None
    # The call goes on for the other member.
    assert get_prediction(server, b["id"])["status"] == "processing"
    gate.open()
    finished = wait_for_prediction(server, b["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["output"]["text"] == "b:2"
    assert get_prediction(server, a["id"])["status"] == "canceled"
    assert get_prediction(server, a["id"])["output"] is None


def test_the_deadline_works_per_member(start_server, gate, tmp_path):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "0", "COG_PREDICT_TIMEOUT": "1"})
    started = tmp_path / "started"
    held = start_async(server, input={"text": "held", "gate": str(gate), "started": str(started)})
    wait_until(started.exists, 10, "the batch to start")
    failed = wait_for_prediction(server, held["id"], timeout=5)
    assert failed["status"] == "failed", failed
    assert "COG_PREDICT_TIMEOUT" in failed["error"]
    # The call no one wants was given up on: the server serves again.
    gate.open()
    wait_until(lambda: server.health()["status"] == "READY", 20, "the model to be ready again")
    assert server.predict_ok({"text": "next"})["output"]["text"] == "next:1"


def test_an_async_batched_model_runs_two_batches_at_once(start_server):
    server = start_server("batched_async")
    inputs = [{"text": f"t{i}", "seconds": 0.6} for i in range(4)]
    started = time.monotonic()
    responses = predict_together(server, inputs)
    elapsed = time.monotonic() - started
    for i, resp in enumerate(responses):
        prediction = resp.json()
        assert prediction["status"] == "succeeded", prediction
        assert prediction["metrics"]["batch_size"] == 2, prediction
        assert prediction["output"] == f"t{i}:2"
    # Two batches of two, side by side: one call's time, not two.
    assert elapsed < 1.15, elapsed


def test_file_inputs_and_outputs_in_a_batch(start_server):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})

    def data_uri(text):
        return "data:text/plain;base64," + base64.b64encode(text.encode()).decode()

    responses = predict_together(
        server,
        [
            {"text": "x", "mode": "file", "file": data_uri("first file")},
            {"text": "y", "mode": "file", "file": data_uri("second file")},
        ],
    )
    for resp, content in zip(responses, ("first file", "second file"), strict=True):
        prediction = resp.json()
        assert prediction["status"] == "succeeded", prediction
        assert prediction["metrics"]["batch_size"] == 2
        url = prediction["output"]["file"]
        assert url.startswith("data:"), url
        assert base64.b64decode(url.split(",", 1)[1]).decode() == content


def test_each_member_sends_its_own_webhooks(start_server, webhook_receiver):
    server = start_server("batched", env={"COG_BATCH_WAIT_MS": "500"})
    barrier = threading.Barrier(2)

    def send(name):
        barrier.wait(timeout=10)
        return server.put(
            f"/predictions/hook-{name}",
            json={"input": {"text": name}, "webhook": webhook_receiver.url(f"/hook-{name}")},
            headers={"Prefer": "respond-async"},
        )

    for resp in [f.result(timeout=20) for f in [in_background(send, n) for n in "ab"]]:
        assert resp.status_code == 202, resp.text
    for name in "ab":
        calls = webhook_receiver.wait_for_completed(f"/hook-{name}")
        body = next(c for c in calls if c.is_terminal).body
        assert body["id"] == f"hook-{name}"
        assert body["output"]["text"] == f"{name}:2", body
        assert body["metrics"]["batch_size"] == 2


@pytest.mark.parametrize(
    ("body", "args", "message"),
    [
        (
            "    @cog.batch(max_size=2)\n    def predict(self, x: int) -> int:\n"
            "        for i in x:\n            yield i\n",
            (),
            "is a generator, which cannot be batched",
        ),
        (
            "    @cog.streaming\n    @cog.batch(max_size=2)\n"
            "    def predict(self, x: int) -> int:\n        return x\n",
            (),
            "is marked @streaming, which cannot be batched",
        ),
        (
            "    def predict(self, x: int) -> int:\n        return x\n\n"
            "    @cog.batch(max_size=2)\n    def train(self, x: int) -> int:\n        return x\n",
            ("--train",),
            "training functions cannot be batched",
        ),
    ],
    ids=["generator", "streaming", "training"],
)
def test_runs_that_cannot_be_batched_fail_setup_saying_why(
    start_server, tmp_path, body, args, message
):
    model = tmp_path / "model"
    model.mkdir()
    (model / "cog.yaml").write_text(
        'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'
        'train: "predict.py:Predictor"\n'
    )
    (model / "predict.py").write_text(
        f"import cog\nfrom cog import BasePredictor\n\n\nclass Predictor(BasePredictor):\n{body}"
    )
    server = start_server(model, ready=False, args=args)
    health = server.wait_for_status("SETUP_FAILED", timeout=30)
    assert message in health["setup"]["logs"], health


def test_the_batch_embed_example_embeds_a_batch_as_it_embeds_one(start_server):
    server = start_server(EXAMPLES / "batch-embed", env={"COG_BATCH_WAIT_MS": "300"})
    alone = server.predict_ok({"text": "a cat sat on the mat"})
    assert alone["metrics"]["batch_size"] == 1
    vector = alone["output"]
    assert len(vector) == 256
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    texts = ["a cat sat on the mat", "dogs bark", "a cat sat on a mat"]
    responses = predict_together(server, [{"text": t} for t in texts])
    together = [r.json() for r in responses]
    assert [p["metrics"]["batch_size"] for p in together] == [3, 3, 3], together
    # In a batch or alone, a text gets the same vector; like texts, like vectors.
    assert max(abs(a - b) for a, b in zip(together[0]["output"], vector, strict=True)) < 1e-4

    def cosine(a, b):
        return sum(x * y for x, y in zip(a["output"], b["output"], strict=True))

    assert cosine(together[0], together[2]) > cosine(together[0], together[1])
    raw = server.predict_ok({"text": "dogs bark", "normalize": False})["output"]
    assert abs(sum(x * x for x in raw) - 1.0) > 1e-3


def test_the_decorator_checks_its_settings_and_leaves_the_signature_alone():
    import inspect

    import cog

    def run(self, text: str = "x") -> str:
        return text

    decorated = cog.batch(max_size=8, max_wait_ms=0)(run)
    assert decorated is run
    assert inspect.signature(decorated) == inspect.signature(run)
    assert cog.batch(run) is run  # bare, with the defaults
    for bad in ({"max_size": 0}, {"max_wait_ms": -1}, {"max_wait_ms": float("nan")}):
        with pytest.raises(ValueError):
            cog.batch(**bad)
    with pytest.raises(TypeError):
        cog.batch(max_size=2.5)
