"""Training mode: `cogd serve --train` (or the launcher's `--x-mode train`)
runs the model's training function (`train:` in cog.yaml, or
COG_TRAIN_TYPE_STUB) on `/trainings`, `/trainings/{id}` and
`/trainings/{id}/cancel`, with everything a prediction has: sync and
`Prefer: respond-async`, webhooks, cancel, file outputs, the same envelope and
the same 422s. A server runs one mode: a training server also takes trainings
at `/predictions` (as Cog's does), a prediction server answers `/trainings`
with 404.

The model is tests/models/trainer: a predictor beside a training function
`train(text, steps, hold)` that returns a weights file and the step count.
"""

import base64

import pytest
from harness import wait_until

TRAIN = ("--train",)


def get_training(server, training_id):
    resp = server.get(f"/trainings/{training_id}")
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def decode(data_uri):
    assert data_uri.startswith("data:"), data_uri
    return base64.b64decode(data_uri.split(",", 1)[1]).decode()


@pytest.fixture
def trainer(start_server):
    return start_server("trainer", args=TRAIN)


def test_a_synchronous_training_runs_the_training_function(trainer):
    resp = trainer.post("/trainings", json={"id": "t-sync", "input": {"text": "ab", "steps": 3}})
    assert resp.status_code == 200, resp.text
    training = resp.json()
    assert training["id"] == "t-sync"
    assert training["status"] == "succeeded", training
    assert training["input"] == {"text": "ab", "steps": 3, "hold": False}
    assert training["output"]["steps"] == 3
    assert decode(training["output"]["weights"]) == "ababab"
    assert "training on 'ab' for 3 steps" in training["logs"]
    assert training["metrics"]["predict_time"] > 0
    for key in ("created_at", "started_at", "completed_at"):
        assert training[key], key


def test_a_training_server_also_takes_trainings_at_predictions(trainer):
    """As Cog's server does in train mode, `/predictions` runs the training
    function too, checked against the training input."""
    root = trainer.get("/").json()
    assert root["trainings_url"] == "/trainings"
    assert root["trainings_idempotent_url"] == "/trainings/{training_id}"
    assert root["trainings_cancel_url"] == "/trainings/{training_id}/cancel"
    assert root["predictions_url"] == "/predictions"
    resp = trainer.post("/predictions", json={"input": {"text": "xy", "steps": 2}})
    assert resp.status_code == 200, resp.text
    training = resp.json()
    assert training["status"] == "succeeded", training
    assert decode(training["output"]["weights"]) == "xyxy"
    # The predictor's input is not what this server checks against.
    resp = trainer.post("/predictions", json={"input": {"prompt": "x"}})
    assert resp.status_code == 422, resp.text


def test_a_prediction_server_does_not_serve_trainings(start_server):
    server = start_server("trainer")
    root = server.get("/").json()
    assert root["predictions_url"] == "/predictions"
    assert "trainings_url" not in root, root
    resp = server.post("/trainings", json={"input": {"text": "x"}})
    assert resp.status_code == 404, resp.text
    assert "--train" in resp.json()["detail"]
    assert server.predict_ok({"prompt": "hi"})["output"] == "predicted: hi"


def test_the_schema_describes_trainings_and_validates_them(trainer):
    document = trainer.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse"):
        assert name in schemas, sorted(schemas)
    inputs = schemas["TrainingInput"]
    assert inputs["required"] == ["text"]
    assert inputs["properties"]["steps"]["minimum"] == 1
    assert schemas["TrainingOutput"]["properties"]["weights"]["format"] == "uri"
    assert "/trainings" in document["paths"]
    assert "/trainings/{training_id}/cancel" in document["paths"]
    # One document for the model, as Cog builds it: the predictor's part too.
    assert "Input" in schemas and "/predictions" in document["paths"]

    resp = trainer.post("/trainings", json={"input": {"steps": 0, "prompt": "x"}})
    assert resp.status_code == 422, resp.text
    locs = {tuple(e["loc"]) for e in resp.json()["detail"]}
    assert ("body", "input", "text") in locs, locs
    assert ("body", "input", "steps") in locs, locs
    assert ("body", "input", "prompt") in locs, locs


def test_an_async_training_reports_to_its_webhook(trainer, webhook_receiver):
    url = webhook_receiver.url("/hook")
    resp = trainer.put(
        "/trainings/t-async",
        json={"input": {"text": "xy"}, "webhook": url},
        headers={"Prefer": "respond-async"},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "starting"
    calls = webhook_receiver.wait_for_completed("/hook")
    completed = calls[-1].body
    assert completed["id"] == "t-async"
    assert completed["status"] == "succeeded", completed
    assert decode(completed["output"]["weights"]) == "xyxy"
    assert calls[0].body["status"] in ("starting", "processing")
    # The same id again is that training, never a second run.
    again = trainer.put("/trainings/t-async", json={"input": {"text": "other"}})
    assert again.status_code == 200 and again.json()["output"] == completed["output"]


def test_a_training_can_be_cancelled(trainer):
    resp = trainer.post(
        "/trainings",
        json={"id": "t-cancel", "input": {"text": "x", "hold": True}},
        headers={"Prefer": "respond-async"},
    )
    assert resp.status_code == 202, resp.text
    wait_until(
        lambda: "holding" in get_training(trainer, "t-cancel")["logs"],
        30,
        "the training to start holding",
    )
    assert trainer.post("/trainings/t-cancel/cancel").status_code == 200
    training = wait_until(
        lambda: (t := get_training(trainer, "t-cancel"))["status"] == "canceled" and t,
        30,
        "the training to be canceled",
    )
    assert training["completed_at"], training
    assert trainer.post("/trainings/nope/cancel").status_code == 404
    # The slot is free again.
    after = trainer.post("/trainings", json={"input": {"text": "z", "steps": 1}})
    assert after.json()["status"] == "succeeded", after.text


def test_trainings_answer_only_with_json(trainer):
    resp = trainer.post(
        "/trainings", json={"input": {"text": "x"}}, headers={"Accept": "text/event-stream"}
    )
    assert resp.status_code == 406, resp.text


def test_a_training_class_is_set_up_once_and_its_train_method_runs(start_server):
    # COG_TRAIN_TYPE_STUB wins over cog.yaml's `train:`.
    server = start_server("trainer", args=TRAIN, env={"COG_TRAIN_TYPE_STUB": "train.py:Trainer"})
    assert "trainer: base model loaded" in server.health()["setup"]["logs"]
    training = server.post("/trainings", json={"input": {"text": "q"}}).json()
    assert training["status"] == "succeeded", training
    assert training["output"] == "tuned:q"


def test_the_cog_launcher_serves_trainings_with_x_mode_train(start_server):
    server = start_server(
        "trainer",
        launcher="cog",
        args=("--x-mode", "train"),
        env={"COG_TRAIN_TYPE_STUB": "train.py:train"},
    )
    assert server.get("/").json()["trainings_url"] == "/trainings"
    training = server.post("/trainings", json={"input": {"text": "L", "steps": 2}}).json()
    assert training["status"] == "succeeded", training
    assert decode(training["output"]["weights"]) == "LL"
