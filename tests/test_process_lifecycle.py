"""Starting and stopping the server process: the port from $PORT, POST
/shutdown and SIGTERM both ending it with exit code 0 (also with a run in
flight), and the `python -m cog.server.http` launcher that Cog-built images
start, including COG_PREDICT_TYPE_STUB and --await-explicit-shutdown; on
SIGTERM, predictions in flight finish (or are cancelled after the grace
period) and their webhooks are delivered before the process exits; under
Kubernetes the ready file follows the model's readiness. Both entry points
run the standalone server the wheel carries, or the server inside Python with
COGD_IN_PROCESS=1.
"""

import os
import shutil
import signal
import subprocess

import pytest
from harness import EXAMPLES, MODELS, in_background, start_async, wait_until


def copy_model(src, dst):
    return shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))


def test_cogd_serve_takes_the_port_from_the_port_env_var(start_server):
    server = start_server("basic", port_via="env")
    assert server.predict_ok({"token": "env-port"})["output"] == "ok:env-port"


def test_post_shutdown_exits_zero(start_server):
    server = start_server("basic")
    resp = server.post("/shutdown")
    assert resp.status_code == 200, resp.text
    assert server.wait_exit(timeout=15) == 0


def test_sigterm_exits_zero(start_server):
    server = start_server("basic")
    server.terminate()
    assert server.wait_exit(timeout=15) == 0


def test_sigterm_with_a_run_in_flight_answers_it_and_exits_zero(start_server):
    server = start_server("basic")
    inflight = in_background(server.predict, {"mode": "ok", "token": "late", "seconds": 1.0})
    server.wait_for_status("BUSY", timeout=10)
    server.terminate()

    # The run is either let finish or cancelled; either way its client gets
    # the outcome rather than a dropped connection.
    resp = inflight.result(timeout=20)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] in {"succeeded", "canceled"}, resp.json()
    assert server.wait_exit(timeout=15) == 0


def test_cog_server_http_launcher_serves_predictions_from_the_model_dir(start_server, tmp_path):
    model = copy_model(EXAMPLES / "hello", tmp_path / "hello")
    server = start_server(
        model, launcher="cog", env={"COG_PREDICT_TYPE_STUB": "predict.py:Predictor"}
    )
    prediction = server.predict_ok({"name": "launcher"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "hello, launcher"


def test_cog_server_http_launcher_uses_predict_type_stub_over_cog_yaml(start_server, tmp_path):
    model = copy_model(MODELS / "basic", tmp_path / "basic")
    # cog.yaml names a predictor that does not exist; the stub must win.
    (model / "cog.yaml").write_text(
        'build:\n  python_version: "3.11"\npredict: "predict.py:NoSuchPredictor"\n'
    )
    server = start_server(
        model, launcher="cog", env={"COG_PREDICT_TYPE_STUB": "predict.py:Predictor"}
    )
    assert server.predict_ok({"token": "stub"})["output"] == "ok:stub"


def test_await_explicit_shutdown_ignores_sigterm_until_post_shutdown(start_server, tmp_path):
    model = copy_model(EXAMPLES / "hello", tmp_path / "hello")
    server = start_server(
        model,
        launcher="cog",
        env={"COG_PREDICT_TYPE_STUB": "predict.py:Predictor"},
        args=("--await-explicit-shutdown", "true"),
    )
    server.proc.send_signal(signal.SIGTERM)
    # Nothing to poll for when the expected event is "nothing happens": give
    # the server a second to (wrongly) exit.
    with pytest.raises(subprocess.TimeoutExpired):
        server.proc.wait(timeout=1.0)
    assert server.health()["status"] == "READY"
    assert server.predict_ok({"name": "still"})["output"] == "hello, still"

    resp = server.post("/shutdown")
    assert resp.status_code == 200, resp.text
    assert server.wait_exit(timeout=15) == 0


def test_sigterm_lets_an_async_prediction_finish_and_delivers_its_webhook(
    start_server, webhook_receiver
):
    server = start_server("basic")
    accepted = start_async(
        server,
        input={"mode": "ok", "token": "drain", "seconds": 1.0},
        webhook=webhook_receiver.url(),
        webhook_events_filter=["completed"],
    )
    server.wait_for_status("BUSY", timeout=10)
    server.terminate()
    assert server.wait_exit(timeout=20) == 0
    # The process only exits after the prediction finished and its webhook left.
    completed = [c for c in webhook_receiver.calls if c.is_terminal]
    assert len(completed) == 1, webhook_receiver.calls
    assert completed[0].body["id"] == accepted["id"]
    assert completed[0].body["status"] == "succeeded", completed[0].body
    assert completed[0].body["output"] == "ok:drain"


def test_sigterm_cancels_what_outlives_the_grace_period(start_server, webhook_receiver):
    server = start_server("basic", env={"COG_SHUTDOWN_GRACE": "0.5"})
    start_async(
        server,
        input={"mode": "ok", "token": "long", "seconds": 30},
        webhook=webhook_receiver.url(),
        webhook_events_filter=["completed"],
    )
    server.wait_for_status("BUSY", timeout=10)
    server.terminate()
    assert server.wait_exit(timeout=20) == 0
    completed = [c for c in webhook_receiver.calls if c.is_terminal]
    assert [c.body["status"] for c in completed] == ["canceled"], webhook_receiver.calls


def test_the_kubernetes_ready_file_exists_exactly_while_ready(start_server):
    ready_file = "/var/run/cog/ready"
    if os.path.exists(ready_file):
        pytest.skip("another process owns the ready file")
    server = start_server("basic", env={"KUBERNETES_SERVICE_HOST": "127.0.0.1"})
    server.wait_for_status("READY", timeout=30)
    wait_until(lambda: os.path.exists(ready_file), timeout=5, what="the ready file")
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    assert not os.path.exists(ready_file)


def test_the_worker_does_not_outlive_a_killed_server(start_server):
    server = start_server("basic")

    def worker_pids():
        # Every thread's children: the worker is spawned from a runtime thread.
        pids = set()
        for task in os.listdir(f"/proc/{server.proc.pid}/task"):
            with open(f"/proc/{server.proc.pid}/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        return pids

    workers = wait_until(worker_pids, timeout=10, what="the worker process")
    server.proc.kill()
    server.proc.wait(timeout=10)

    def all_gone():
        return not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in workers)

    wait_until(all_gone, timeout=2, what=f"worker {workers} to exit")


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def server_executable(server):
    return os.path.realpath(f"/proc/{server.proc.pid}/exe")


@pytest.mark.parametrize("launcher", ["cogd", "cog"])
def test_both_entry_points_run_the_bundled_server_without_python(start_server, tmp_path, launcher):
    """The wheel `make install` builds carries the standalone server, and both
    commands replace their Python process with it (same pid, no interpreter)."""
    from cogd.cli import BUNDLED_SERVER

    assert BUNDLED_SERVER.is_file(), "make install bundles the server in the wheel"
    model = copy_model(EXAMPLES / "hello", tmp_path / "hello")
    server = start_server(model, launcher=launcher)
    assert server_executable(server) == str(BUNDLED_SERVER.resolve())
    prediction = server.predict_ok({"name": "native"})
    assert prediction["output"] == "hello, native", prediction


def test_cogd_in_process_runs_the_server_inside_python(start_server):
    server = start_server(EXAMPLES / "hello", env={"COGD_IN_PROCESS": "1"})
    assert "python" in os.path.basename(server_executable(server))
    prediction = server.predict_ok({"name": "in-process"})
    assert prediction["output"] == "hello, in-process", prediction
