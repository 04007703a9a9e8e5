"""Scale-out: replicas consuming one Redis Streams queue (docs/scale-out.md).

Each test starts its own redis-server (see the `redis_server` fixture) and
real cogd replicas with `COG_QUEUE_URL`, adds entries in the format Cog's
Redis worker read, and checks what reaches webhooks, response keys, the
model's own side-effect log and the stream's consumer group.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from harness import wait_until

STREAM = "cog:predictions"


def queue_env(redis: Any, replica: str = "a", **extra: str) -> dict[str, str]:
    env = {"COG_QUEUE_URL": redis.url, "QUEUE_REPLICA": replica, "COG_QUEUE_CONSUMER": replica}
    env.update(extra)
    return env


def add(client: Any, request: dict, stream: str = STREAM) -> str:
    return client.xadd(stream, {"value": json.dumps(request)})


def completed(receiver: Any) -> list[dict]:
    return [
        c.body
        for c in receiver.calls_to("/webhook")
        if isinstance(c.body, dict) and c.body.get("status") in ("succeeded", "failed", "canceled")
    ]


def wait_completed(receiver: Any, count: int, timeout: float = 30.0) -> list[dict]:
    wait_until(lambda: len(completed(receiver)) >= count, timeout, f"{count} completed webhooks")
    return completed(receiver)


def runs(runlog: Path) -> list[tuple[str, str, str]]:
    """The model's side-effect log: (event, token, replica) per line."""
    if not runlog.exists():
        return []
    return [tuple(line.split()) for line in runlog.read_text().splitlines() if line.strip()]


def pending(client: Any, stream: str = STREAM) -> int:
    return client.xpending(stream, stream)["pending"]


def test_one_replica_runs_entries_and_reports_by_webhook_and_response_key(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server()
    r = redis.client()
    runlog = tmp_path / "runlog"

    def request(i: int) -> dict:
        return {
            "id": f"p{i}",
            "input": {"token": f"p{i}", "runlog": str(runlog)},
            "webhook": webhook_receiver.url(),
            "response_queue": f"response:p{i}",
        }

    # Entries added before any replica exists are run too (the group is
    # made to read the stream from its start).
    add(r, request(0))
    server = start_server("queue_worker", env=queue_env(redis))
    for i in range(1, 5):
        add(r, request(i))
    done = {b["id"]: b for b in wait_completed(webhook_receiver, 5)}
    assert sorted(done) == [f"p{i}" for i in range(5)]
    for i in range(5):
        assert done[f"p{i}"]["status"] == "succeeded", done[f"p{i}"]
        assert done[f"p{i}"]["output"] == f"done:p{i}"
        final = json.loads(r.get(f"response:p{i}"))
        assert final["status"] == "succeeded" and final["output"] == f"done:p{i}"
    starts = [
        c.body for c in webhook_receiver.calls_to("/webhook") if c.body["status"] == "starting"
    ]
    assert sorted(b["id"] for b in starts) == [f"p{i}" for i in range(5)]
    assert Counter(event for event, _, _ in runs(runlog)) == {"start": 5, "end": 5}
    wait_until(lambda: pending(r) == 0, 10, "every entry acknowledged")

    # The HTTP API shares the replica: probes, predictions, metrics.
    assert server.get("/readyz").status_code == 200
    assert server.predict_ok({"token": "http"})["output"] == "done:http"
    metrics = server.get("/metrics").text
    assert "cogd_queue_entries_read_total 5" in metrics
    assert "cogd_queue_entries_acked_total 5" in metrics
    assert "cogd_queue_group_pending 0" in metrics
    assert "cogd_queue_group_lag 0" in metrics


def test_bad_entries_fail_clearly_and_are_acknowledged(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server()
    r = redis.client()
    start_server("queue_worker", env=queue_env(redis))
    r.xadd(STREAM, {"other": "x"})
    r.xadd(STREAM, {"value": "not json"})
    add(
        r,
        {
            "id": "bad-input",
            "input": {"seconds": "soon"},
            "webhook": webhook_receiver.url(),
            "response_queue": "response:bad-input",
        },
    )
    add(r, {"id": "bad-field", "input": [1], "response_queue": "response:bad-field"})
    [failed] = wait_completed(webhook_receiver, 1)
    assert failed["id"] == "bad-input" and failed["status"] == "failed"
    assert "seconds" in failed["error"], failed
    assert json.loads(r.get("response:bad-input"))["status"] == "failed"
    wait_until(lambda: r.get("response:bad-field"), 10, "the bad field reported")
    bad_field = json.loads(r.get("response:bad-field"))
    assert bad_field["status"] == "failed" and "`input` must be an object" in bad_field["error"]
    wait_until(lambda: pending(r) == 0, 10, "every entry acknowledged")
    dead = r.xrange(f"{STREAM}:dead")
    assert len(dead) == 2, dead
    errors = sorted(fields["error"] for _, fields in dead)
    assert "no `value` field" in errors[0] or "no `value` field" in errors[1], errors
    assert any("not JSON" in e for e in errors), errors


def test_a_cancel_key_cancels_the_run(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server()
    r = redis.client()
    runlog = tmp_path / "runlog"
    start_server("queue_worker", env=queue_env(redis))
    add(
        r,
        {
            "id": "long",
            "input": {"token": "long", "seconds": 60, "runlog": str(runlog)},
            "webhook": webhook_receiver.url(),
            "cancel_key": "cancel:long",
            "response_queue": "response:long",
        },
    )
    wait_until(lambda: runs(runlog), 15, "the run to start")
    asked = time.monotonic()
    r.set("cancel:long", "1")
    [done] = wait_completed(webhook_receiver, 1, timeout=10)
    assert done["status"] == "canceled", done
    assert time.monotonic() - asked < 5
    assert json.loads(r.get("response:long"))["status"] == "canceled"
    wait_until(lambda: pending(r) == 0, 10, "the entry acknowledged")


def test_an_entry_past_its_deadline_fails_without_running(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server()
    r = redis.client()
    runlog = tmp_path / "runlog"
    start_server("queue_worker", env=queue_env(redis))
    now = datetime.now(timezone.utc)
    for name, deadline in (
        ("late", now - timedelta(seconds=5)),
        ("timely", now + timedelta(hours=1)),
    ):
        add(
            r,
            {
                "id": name,
                "input": {"token": name, "runlog": str(runlog)},
                "webhook": webhook_receiver.url(),
                "deadline": deadline.isoformat(),
            },
        )
    done = {b["id"]: b for b in wait_completed(webhook_receiver, 2)}
    assert done["late"]["status"] == "failed" and "deadline" in done["late"]["error"]
    assert done["timely"]["status"] == "succeeded"
    assert {token for _, token, _ in runs(runlog)} == {"timely"}
    wait_until(lambda: pending(r) == 0, 10, "every entry acknowledged")


def test_an_unreachable_queue_is_not_ready_and_work_resumes_when_it_returns(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server(persist=True)
    redis.stop()
    server = start_server("queue_worker", env=queue_env(redis))
    wait_until(lambda: "the queue is unreachable" in server.stderr_text(), 10, "the outage logged")
    assert server.get("/readyz").status_code == 503
    assert server.get("/readyz").json()["queue"] == "unreachable"
    redis.start()
    wait_until(lambda: server.get("/readyz").status_code == 200, 15, "ready again")
    add(redis.client(), {"id": "after", "input": {}, "webhook": webhook_receiver.url()})
    [done] = wait_completed(webhook_receiver, 1, timeout=15)
    assert done["status"] == "succeeded"


def test_redis_restarted_mid_run_loses_nothing(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server(persist=True)
    r = redis.client()
    runlog = tmp_path / "runlog"
    start_server("queue_worker", env=queue_env(redis, COG_QUEUE_LEASE="2"))
    ids = [f"r{i}" for i in range(40)]
    for id in ids:
        add(
            r,
            {
                "id": id,
                "input": {"token": id, "seconds": 0.05, "runlog": str(runlog)},
                "webhook": webhook_receiver.url(),
                "webhook_events_filter": ["completed"],
            },
        )
    wait_completed(webhook_receiver, 10)
    redis.restart(down_for=1.0)
    done = wait_completed(webhook_receiver, 40, timeout=60)
    counts = Counter(b["id"] for b in done)
    assert set(counts) == set(ids)
    assert all(n == 1 for n in counts.values()), counts
    assert all(b["status"] == "succeeded" for b in done)
    r = redis.client()
    wait_until(lambda: pending(r) == 0, 15, "every entry acknowledged")


def test_four_replicas_take_2000_entries_through_a_kill_and_a_stop(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    """Every entry completes exactly once while one replica is SIGKILLed and
    another SIGTERMed midway; only the poison entry is dead-lettered."""
    redis = redis_server()
    r = redis.client()
    runlog = tmp_path / "runlog"
    hook = webhook_receiver.url()
    # The poison entry: taken by a consumer that died, three times over.
    r.xgroup_create(STREAM, STREAM, id="0", mkstream=True)
    poison = add(r, {"id": "poison", "input": {"token": "poison"}, "webhook": hook})
    r.xreadgroup(STREAM, "ghost", {STREAM: ">"}, count=1)
    r.xclaim(STREAM, STREAM, "ghost", 0, [poison], retrycount=3)

    env = {"COG_QUEUE_LEASE": "1.5", "COG_SHUTDOWN_GRACE": "10"}
    replicas = {
        name: start_server("queue_worker", env=queue_env(redis, name, **env))
        for name in ("a", "b", "c", "d")
    }
    total = 2000
    ids = [f"e{i}" for i in range(total)]
    pipe = r.pipeline(transaction=False)
    for id in ids:
        pipe.xadd(
            STREAM,
            {
                "value": json.dumps(
                    {
                        "id": id,
                        "input": {"token": id, "runlog": str(runlog)},
                        "webhook": hook,
                        "webhook_events_filter": ["completed"],
                    }
                )
            },
        )
    pipe.execute()

    def kill_mid_run(name: str) -> None:
        # Aim for a moment the replica is inside a run, so the kill cuts it.
        def running() -> bool:
            lines = [line for line in runs(runlog) if line[2] == name]
            return bool(lines) and lines[-1][0] == "start"

        wait_until(running, 10, f"replica {name} to be running", interval=0.001)
        os.killpg(replicas[name].proc.pid, signal.SIGKILL)

    wait_completed(webhook_receiver, total // 4, timeout=60)
    kill_mid_run("b")
    wait_completed(webhook_receiver, total // 2, timeout=60)
    replicas["c"].terminate()
    assert replicas["c"].wait_exit(timeout=30) == 0
    done = wait_completed(webhook_receiver, total, timeout=120)

    counts = Counter(b["id"] for b in done)
    assert set(counts) == set(ids), set(ids) ^ set(counts)
    assert [id for id, n in counts.items() if n != 1] == []
    assert all(b["status"] == "succeeded" for b in done)
    ends = Counter(token for event, token, _ in runs(runlog) if event == "end")
    starts = Counter(token for event, token, _ in runs(runlog) if event == "start")
    # Each ran to completion once; a second start is a run the kill cut.
    twice = [id for id in ids if ends[id] != 1]
    assert twice == [], {id: [line for line in runs(runlog) if line[1] == id] for id in twice}
    for id in ids:
        if starts[id] > 1:
            cut = [line for line in runs(runlog) if line[1] == id and line[2] == "b"]
            assert cut and cut[-1][0] == "start", (id, cut)
    assert sum(n - 1 for n in starts.values()) <= 1
    wait_until(lambda: len(r.xrange(f"{STREAM}:dead")) >= 1, 15, "the poison dead-lettered")
    dead = r.xrange(f"{STREAM}:dead")
    assert [json.loads(f["value"])["id"] for _, f in dead] == ["poison"]
    assert "delivered 4 times" in dead[0][1]["error"]
    assert "poison" not in counts
    wait_until(lambda: pending(r) == 0, 15, "every entry acknowledged")


def test_a_stopped_replica_leaves_unfinished_entries_for_another(
    start_server: Any, redis_server: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    redis = redis_server()
    r = redis.client()
    runlog = tmp_path / "runlog"
    env = {"COG_QUEUE_LEASE": "1", "COG_SHUTDOWN_GRACE": "0.5"}
    first = start_server("queue_worker", env=queue_env(redis, "first", **env))
    add(
        r,
        {
            "id": "slow",
            "input": {"token": "slow", "seconds": 3, "runlog": str(runlog)},
            "webhook": webhook_receiver.url(),
            "webhook_events_filter": ["completed"],
        },
    )
    wait_until(lambda: runs(runlog), 15, "the run to start")
    first.terminate()
    assert first.wait_exit(timeout=20) == 0
    assert completed(webhook_receiver) == []
    assert pending(r) == 1
    start_server("queue_worker", env=queue_env(redis, "second", **env))
    [done] = wait_completed(webhook_receiver, 1, timeout=30)
    assert done["status"] == "succeeded"
    assert [(e, replica) for e, _, replica in runs(runlog)] == [
        ("start", "first"),
        ("start", "second"),
        ("end", "second"),
    ]
    wait_until(lambda: pending(r) == 0, 10, "the entry acknowledged")


def test_cogs_redis_worker_launcher_starts_queue_mode(
    start_server: Any, redis_server: Any, webhook_receiver: Any
) -> None:
    redis = redis_server()
    r = redis.client()
    start_server(
        "queue_worker",
        launcher="cog-redis-queue",
        args=(
            "--redis-url",
            redis.url,
            "--input-queue",
            "jobs",
            "--upload-url",
            "http://127.0.0.1:9/upload/",
            "--consumer-id",
            "worker-1",
            "--model-id",
            "m",
            "--predict-timeout",
            "60",
        ),
    )
    add(r, {"id": "j1", "input": {}, "webhook": webhook_receiver.url()}, stream="jobs")
    [done] = wait_completed(webhook_receiver, 1)
    assert done["status"] == "succeeded"
    consumers = r.xinfo_consumers("jobs", "jobs")
    assert [c["name"] for c in consumers] == ["worker-1"]


def test_cogs_http_launcher_honours_the_queue_variables(
    start_server: Any, redis_server: Any, webhook_receiver: Any
) -> None:
    redis = redis_server()
    r = redis.client()
    env = {"COG_QUEUE_URL": redis.url, "COG_QUEUE_STREAM": "jobs", "COG_QUEUE_GROUP": "workers"}
    start_server("queue_worker", launcher="cog", env=env)
    add(r, {"id": "h1", "input": {}, "webhook": webhook_receiver.url()}, stream="jobs")
    [done] = wait_completed(webhook_receiver, 1)
    assert done["status"] == "succeeded"
    assert [g["name"] for g in r.xinfo_groups("jobs")] == ["workers"]


def test_a_batched_model_takes_a_whole_batch_of_entries_at_once(
    start_server: Any, redis_server: Any, tmp_path: Path
) -> None:
    # tests/models/batched has max_size=4 and one slot: four places free, so
    # the consumer takes four entries at once and they run as one batch,
    # long before the batch's wait would have sent a lone one.
    redis = redis_server()
    r = redis.client()
    log = tmp_path / "batches.jsonl"
    for i in range(4):
        add(r, {"id": f"b{i}", "input": {"text": f"t{i}", "log": str(log)}})
    start_server("batched", env=queue_env(redis, COG_BATCH_WAIT_MS="5000"))

    def sizes() -> list[int]:
        if not log.exists():
            return []
        return [json.loads(line)["size"] for line in log.read_text().splitlines()]

    wait_until(lambda: sum(sizes()) >= 4, 20, "four members run")
    assert sizes() == [4]
    wait_until(lambda: pending(r) == 0, 10, "every entry acknowledged")
