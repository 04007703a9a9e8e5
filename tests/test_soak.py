"""Soak: COGD_SOAK_N predictions (1000 by default; `make soak` runs 10000)
from 8 clients at once against the soak model (8 async slots), mixing runs
that succeed, raise, are cancelled, crash the worker (os._exit; the worker is
restarted, COG_MAX_WORKER_RESTARTS is set high for it), and synchronous
clients that hang up mid-run; a quarter ask for webhooks.

Afterwards:
- every request got exactly one terminal answer: its own status, or `failed`
  naming the worker when a crash took the run down with it; the only other
  answer allowed is 503 while the worker restarts, which clients retry and the
  report counts;
- every prediction that asked for webhooks got exactly one `completed`
  webhook, with the status its client saw, and no other prediction got any;
- the server's temp dir (its own TMPDIR) holds no prediction directory, and
  is empty once the server has stopped;
- the server's open file descriptors are as many as after warm-up, and its
  RSS grew by less than a small bound.

Marked `soak`: `pytest -m "not soak"` leaves it out.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from harness import (
    TERMINAL_STATUSES,
    Server,
    proc_status_bytes,
    send_and_hang_up,
    wait_until,
)

N = int(os.environ.get("COGD_SOAK_N", "1000"))
CLIENTS = 8
# Every CRASH_EVERY-th prediction kills the worker.
CRASH_EVERY = 100
# How much the server's RSS may grow between warm-up and the end.
RSS_GROWTH_LIMIT = 48 * 1024 * 1024
# Open descriptors the server may have beyond its count after warm-up
# (connections the last clients closed may take a moment to be seen).
FD_SLACK = 4

pytestmark = [pytest.mark.soak, pytest.mark.timeout(max(120, N // 10))]

# What each kind of request does, and how often (crashes come on their own).
KINDS = {
    "ok": 0.60,
    "raise": 0.10,
    "ok_async": 0.10,
    "cancel": 0.10,
    "hang_up": 0.10,
}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sockets_to(pid: int, port: int) -> int:
    """How many of `pid`'s sockets are TCP connections to local `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except OSError:
            pass  # closed meanwhile
    return count


class Client:
    """One test client's view of the server, counting the 503s it retried."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.retried_503 = 0
        self.lock = threading.Lock()

    def _count_503(self) -> None:
        with self.lock:
            self.retried_503 += 1

    def create(self, prediction_id: str, body: dict, *, wait: bool) -> requests.Response:
        """PUT the prediction; a 503 (worker restarting) is retried."""
        headers = {} if wait else {"Prefer": "respond-async"}
        while True:
            resp = requests.put(
                f"{self.server.url}/predictions/{prediction_id}",
                json=body,
                headers=headers,
                timeout=60,
            )
            if resp.status_code != 503:
                return resp
            self._count_503()
            time.sleep(0.05)

    def get(self, prediction_id: str) -> dict:
        resp = requests.get(f"{self.server.url}/predictions/{prediction_id}", timeout=30)
        assert resp.status_code == 200, f"GET {prediction_id}: {resp.status_code} {resp.text}"
        return resp.json()

    def until(self, prediction_id: str, statuses: set[str]) -> dict:
        last: dict = {}

        def reached() -> bool:
            nonlocal last
            last = self.get(prediction_id)
            return last["status"] in statuses

        wait_until(reached, timeout=60, what=f"{prediction_id} in {statuses}", interval=0.01)
        return last

    def hang_up(self, prediction_id: str, body: dict) -> dict:
        """A synchronous PUT whose client closes the socket once the run is
        under way; the answer is what the prediction became."""
        while True:
            sock = send_and_hang_up(self.server, "PUT", f"/predictions/{prediction_id}", body)
            try:
                while True:
                    readable, _, _ = select.select([sock], [], [], 0.01)
                    if readable:
                        # The server answered before the hang-up: a refusal,
                        # or a run a crash ended at once.
                        head = sock.recv(65536).decode(errors="replace")
                        status = int(head.split(" ", 2)[1]) if head else 0
                        if status == 200:
                            return self.until(prediction_id, TERMINAL_STATUSES)
                        assert status == 503, f"hang-up request answered {head[:500]!r}"
                        break
                    resp = requests.get(
                        f"{self.server.url}/predictions/{prediction_id}", timeout=30
                    )
                    if resp.status_code == 200 and resp.json()["status"] != "starting":
                        sock.close()
                        return self.until(prediction_id, TERMINAL_STATUSES)
            finally:
                sock.close()
            self._count_503()
            time.sleep(0.05)

    def cancel(self, prediction_id: str) -> None:
        resp = requests.post(f"{self.server.url}/predictions/{prediction_id}/cancel", timeout=30)
        assert resp.status_code == 200, f"cancel {prediction_id}: {resp.status_code}"


def plan(n: int) -> list[tuple[str, bool]]:
    """(kind, wants a webhook) for each prediction, the same every run."""
    rng = random.Random(20240601)
    kinds, weights = zip(*KINDS.items(), strict=True)
    return [
        (
            "crash" if i % CRASH_EVERY == CRASH_EVERY // 2 else rng.choices(kinds, weights)[0],
            rng.random() < 0.25,
        )
        for i in range(n)
    ]


def run_one(client: Client, i: int, kind: str, webhook: str | None) -> dict:
    """Makes prediction i of `kind`; returns its terminal state."""
    prediction_id = f"soak-{i}"
    mode = {"ok_async": "ok", "cancel": "hold", "hang_up": "hold"}.get(kind, kind)
    body: dict = {"input": {"mode": mode, "token": prediction_id}}
    if webhook:
        body["webhook"] = webhook
        if i % 2:
            body["webhook_events_filter"] = ["completed"]
    if kind == "hang_up":
        return client.hang_up(prediction_id, body)
    if kind in ("ok", "raise", "crash"):
        resp = client.create(prediction_id, body, wait=True)
        assert resp.status_code == 200, f"{prediction_id}: {resp.status_code} {resp.text[:500]}"
        return resp.json()
    resp = client.create(prediction_id, body, wait=False)
    assert resp.status_code == 202, f"{prediction_id}: {resp.status_code} {resp.text[:500]}"
    if kind == "cancel":
        state = client.until(prediction_id, {"processing"} | TERMINAL_STATUSES)
        if state["status"] == "processing":
            client.cancel(prediction_id)
    return client.until(prediction_id, TERMINAL_STATUSES)


EXPECTED = {
    "ok": "succeeded",
    "ok_async": "succeeded",
    "raise": "failed",
    "crash": "failed",
    "cancel": "canceled",
    "hang_up": "canceled",
}


def classify(kind: str, i: int, state: dict) -> str:
    """'expected', or 'crash-collateral' for a run a worker crash took down."""
    status, error = state["status"], state.get("error") or ""
    assert status in TERMINAL_STATUSES, state
    if kind == "crash" or (status == "failed" and "worker" in error.lower()):
        assert status == "failed" and "worker" in error.lower(), (kind, i, state)
        return "expected" if kind == "crash" else "crash-collateral"
    assert status == EXPECTED[kind], (kind, i, {k: state.get(k) for k in ("status", "error")})
    if kind in ("ok", "ok_async"):
        assert state["output"] == f"ok:soak-{i}", state
    if kind == "raise":
        assert "boom" in error, state
    return "expected"


def test_soak(start_server, short_tmpdir, webhook_receiver, capsys):
    server = start_server(
        "soak",
        env={
            "TMPDIR": str(short_tmpdir),
            "COG_MAX_WORKER_RESTARTS": str(N),
            # Restarts are spaced out, so each backs off only briefly.
            "COG_WORKER_RESTART_WINDOW": "1",
            "COG_THROTTLE_RESPONSE_INTERVAL": "0.05",
        },
    )
    pid = server.proc.pid
    client = Client(server)
    hook = webhook_receiver.url("/soak")

    # Warm-up: every slot has run, connections have come and gone.
    with ThreadPoolExecutor(CLIENTS) as pool:
        warm = list(
            pool.map(lambda j: client.create(f"warm-{j}", {"input": {}}, wait=True), range(64))
        )
    assert all(r.status_code == 200 for r in warm), [r.status_code for r in warm]
    fds_before = fd_count(pid)
    rss_before = proc_status_bytes(pid)

    predictions = plan(N)
    began = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(run_one, client, i, kind, hook if webhook else None)
            for i, (kind, webhook) in enumerate(predictions)
        ]
        states = [f.result() for f in futures]
    duration = time.monotonic() - began

    outcomes: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    for i, ((kind, _), state) in enumerate(zip(predictions, states, strict=True)):
        outcomes[(kind, classify(kind, i, state))] += 1
        statuses[state["status"]] += 1

    # Webhooks: exactly one `completed` for each prediction that asked.
    wanted = {f"soak-{i}": states[i]["status"] for i, (_, w) in enumerate(predictions) if w}

    def completed_by_id() -> dict[str, list]:
        by_id: dict[str, list] = collections.defaultdict(list)
        for call in webhook_receiver.calls_to("/soak"):
            if call.is_terminal:
                by_id[call.body["id"]].append(call)
        return by_id

    webhook_receiver.wait_for(
        lambda _: wanted.keys() <= completed_by_id().keys(),
        timeout=30,
        what="a completed webhook for every prediction that asked",
    )
    completed = completed_by_id()
    assert set(completed) == set(wanted), set(completed) ^ set(wanted)
    twice = {pid_: len(calls) for pid_, calls in completed.items() if len(calls) != 1}
    assert not twice, f"completed webhooks sent more than once: {twice}"
    mismatched = {
        pid_: (calls[0].status, wanted[pid_])
        for pid_, calls in completed.items()
        if calls[0].status != wanted[pid_]
    }
    assert not mismatched, mismatched
    strangers = {c.body.get("id") for c in webhook_receiver.calls_to("/soak")} - set(wanted)
    assert not strangers, strangers

    # Nothing left in temp space while serving, nothing at all after.
    leftovers = list(short_tmpdir.glob("cogd-*/predictions/*"))
    assert leftovers == [], leftovers[:10]

    # The webhook sender keeps its connections to the receiver alive for
    # the next deliveries (until they idle out): those are not leaks.
    receiver_port = int(webhook_receiver.url("").rsplit(":", 1)[1])
    fds_after = wait_until(
        lambda: (
            (n := fd_count(pid) - sockets_to(pid, receiver_port)) <= fds_before + FD_SLACK and n
        ),
        timeout=10,
        what=f"the server's fds to return near {fds_before}",
    )
    rss_after = proc_status_bytes(pid)
    health = server.health()["status"]

    server.terminate()
    assert server.wait_exit(timeout=30) == 0
    temp_after = sorted(p.name for p in Path(short_tmpdir).iterdir())

    report = {
        "predictions": N,
        "clients": CLIENTS,
        "duration_s": round(duration, 1),
        "per_second": round(N / duration, 1),
        "statuses": dict(statuses),
        "outcomes": {f"{k}:{v}": n for (k, v), n in sorted(outcomes.items())},
        "retried_503": client.retried_503,
        "webhooks_completed": len(completed),
        "webhook_calls": len(webhook_receiver.calls_to("/soak")),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "health_at_end": health,
        "temp_after_stop": temp_after,
    }
    with capsys.disabled():
        print("\nsoak report:", json.dumps(report, indent=2))
    if path := os.environ.get("COGD_SOAK_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n")

    assert health == "READY", report
    assert temp_after == [], report
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, report
