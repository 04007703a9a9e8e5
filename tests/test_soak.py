"""Soak: COGD_SOAK_N predictions (1000 by default; `make soak` runs 10000)
from 8 clients at once against the soak model (async, 16 slots), mixing runs
that succeed, raise, return a file, are cancelled, crash the worker
(os._exit; the worker is restarted, COG_MAX_WORKER_RESTARTS is set high for
it), and synchronous clients that hang up mid-run; a quarter ask for
webhooks. Hostile and unlucky clients are mixed in as well:

- stubborn cancels: runs deaf to every cancel until the test releases them
  (as a run in a long native or GPU call), cancelled explicitly or by a
  synchronous client's timeout; each must end `canceled` after
  COG_CANCEL_GRACE while the run goes on, and never cost the worker;
- client timeouts: synchronous clients that give up (a socket timeout)
  mid-run;
- a hung upload receiver: file outputs sent to an `output_file_prefix` that
  takes the PUT and never answers; with a small COG_UPLOAD_TIMEOUT each such
  prediction fails naming the upload, and frees its slot.

Afterwards:
- every request got exactly one terminal answer (GET polled until then): its
  own status, or `failed` naming the worker when a crash took the run down
  with it; the only other answer allowed is 503 while the worker restarts,
  which clients retry and the report counts; a prediction still kept says
  the same status at the end, and the server counted each once;
- the model was never DEFUNCT (health is watched throughout), and the worker
  was restarted once per crash and never for a cancel; every slot is usable
  and free at the end;
- every prediction that asked for webhooks got exactly one `completed`
  webhook, with the status its client saw, and no other prediction got any;
- the server's temp dir (its own TMPDIR) holds no prediction directory, and
  is empty once the server has stopped;
- the server's open file descriptors are as many as after warm-up, and its
  RSS grew by less than a small bound.

Marked `soak`: `pytest -m "not soak"` leaves it out.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import re
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
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
# Each client has at most one prediction of its own in flight, plus a deaf
# run it released that may not have returned yet: twice as many slots as
# clients, so no request ever meets 409.
SLOTS = 2 * CLIENTS
# Every CRASH_EVERY-th prediction kills the worker.
CRASH_EVERY = 100
# Seconds a cancelled run has before it is reported `canceled` while it goes on.
CANCEL_GRACE_S = 0.2
# Seconds a deaf run goes on after its prediction ended `canceled`.
DEAF_FOR_S = 0.5
# Seconds each upload attempt to the hung receiver may take.
UPLOAD_TIMEOUT_S = 0.2
# Seconds a timing-out client waits for its answer before it gives up.
CLIENT_TIMEOUT_S = 0.5
# How often health, fds and RSS are sampled while the soak runs.
WATCH_EVERY_S = 0.05
# How much the server's RSS may grow between warm-up and the end: most of
# it is the finished predictions it keeps (about 6 MiB for 1000 of these).
RSS_GROWTH_LIMIT = 24 * 1024 * 1024
# The server keeps this many finished predictions; once it has, its RSS must
# stay flat: over the second half of a soak that long, it may grow by at most
# RSS_FLAT_LIMIT (0.2 MiB measured; a leak of 4 KiB per prediction shows at
# 2000 predictions, of 1 KiB at 10000).
KEPT_FINISHED = 1000
RSS_FLAT_LIMIT = 4 * 1024 * 1024
# Open descriptors the server may have beyond its count after warm-up
# (connections the last clients closed may take a moment to be seen).
FD_SLACK = 4

pytestmark = [pytest.mark.soak, pytest.mark.timeout(max(120, N // 10))]

# What each kind of request does, and how often (crashes come on their own).
KINDS = {
    "ok": 0.48,
    "raise": 0.08,
    "ok_async": 0.08,
    "file": 0.04,
    "cancel": 0.08,
    "hang_up": 0.08,
    "deaf_cancel": 0.05,
    "timeout": 0.04,
    "deaf_timeout": 0.03,
    "hung_upload": 0.04,
}
# The model's mode for each kind, where it is not the kind's own name.
MODES = {
    "ok_async": "ok",
    "cancel": "hold",
    "hang_up": "hold",
    "timeout": "hold",
    "deaf_cancel": "deaf",
    "deaf_timeout": "deaf",
    "hung_upload": "file",
}
# Warm-up: two of each kind, after a round of plain runs on every slot.
WARM_UP = ["ok"] * 4 * SLOTS + [kind for kind in KINDS for _ in range(2)]


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


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of `name{labels}` in a Prometheus text exposition (0 if absent)."""
    pattern = "^" + re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class SilentReceiver:
    """A loopback HTTP endpoint that takes every connection, reads what is
    sent (an upload's PUT and its body), and never answers; it closes a
    connection once its peer has. One thread, however many hang on it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}{path}"

    def open_connections(self) -> int:
        return len(self.selector.get_map()) - 1

    def _serve(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(conn)
                    conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


class Watch:
    """Samples the server's health, open fds and RSS from a thread until
    stopped: what health said (and how often), the highest fds, and every
    RSS sample."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.health: collections.Counter = collections.Counter()
        self.fds_max = 0
        self.rss: list[int] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        pid = self.server.proc.pid
        while not self.stopping.wait(WATCH_EVERY_S):
            try:
                resp = self.server.get("/health-check", timeout=5)
                self.health[resp.json().get("status", f"HTTP {resp.status_code}")] += 1
            except (requests.RequestException, ValueError) as e:
                self.health[type(e).__name__] += 1
            self.fds_max = max(self.fds_max, fd_count(pid))
            self.rss.append(proc_status_bytes(pid))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)


class Client:
    """One test client's view of the server, counting the 503s it retried.

    Deaf runs wait for a release file in `releases`; file outputs of
    `hung_upload` predictions go to `hung_prefix`, which never answers."""

    def __init__(self, server: Server, releases: Path, hung_prefix: str) -> None:
        self.server = server
        self.releases = releases
        self.hung_prefix = hung_prefix
        self.retried_503 = 0
        self.timed_out = 0
        self.lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

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
            self._count("retried_503")
            time.sleep(0.05)

    def get(self, prediction_id: str) -> dict:
        resp = requests.get(f"{self.server.url}/predictions/{prediction_id}", timeout=30)
        assert resp.status_code == 200, f"GET {prediction_id}: {resp.status_code} {resp.text}"
        return resp.json()

    def until(self, prediction_id: str, reached: Callable[[dict], bool]) -> dict:
        last: dict = {}

        def polled() -> bool:
            nonlocal last
            last = self.get(prediction_id)
            return reached(last)

        wait_until(polled, timeout=60, what=f"{prediction_id} to go on", interval=0.01)
        return last

    def terminal(self, prediction_id: str) -> dict:
        return self.until(prediction_id, lambda state: state["status"] in TERMINAL_STATUSES)

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
                            return self.terminal(prediction_id)
                        assert status == 503, f"hang-up request answered {head[:500]!r}"
                        break
                    resp = requests.get(
                        f"{self.server.url}/predictions/{prediction_id}", timeout=30
                    )
                    if resp.status_code == 200 and resp.json()["status"] != "starting":
                        sock.close()
                        return self.terminal(prediction_id)
            finally:
                sock.close()
            self._count("retried_503")
            time.sleep(0.05)

    def time_out(self, prediction_id: str, body: dict) -> dict:
        """A synchronous PUT whose client gives up after CLIENT_TIMEOUT_S, as
        `curl -m` does; the answer is what the prediction became."""
        while True:
            try:
                resp = requests.put(
                    f"{self.server.url}/predictions/{prediction_id}",
                    json=body,
                    timeout=(30, CLIENT_TIMEOUT_S),
                )
            except requests.Timeout:
                self._count("timed_out")
                return self.terminal(prediction_id)
            if resp.status_code != 503:
                # Only a crash ends these runs before the client gives up.
                assert resp.status_code == 200, f"{prediction_id}: {resp.status_code}"
                return resp.json()
            self._count("retried_503")
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


def under_way(prediction_id: str, mode: str) -> Callable[[dict], bool]:
    """Whether a prediction's run is under way (a deaf one: deaf already), or over."""
    line = f"{prediction_id}:deaf" if mode == "deaf" else None

    def reached(state: dict) -> bool:
        if state["status"] in TERMINAL_STATUSES:
            return True
        if line is not None:
            return line in (state.get("logs") or "")
        return state["status"] == "processing"

    return reached


def run_one(client: Client, prediction_id: str, kind: str, hooks: dict) -> dict:
    """Makes the prediction of `kind`, with `hooks` (its webhook fields, if
    any) in the request; returns its terminal state."""
    mode = MODES.get(kind, kind)
    body: dict = {"input": {"mode": mode, "token": prediction_id}, **hooks}
    if mode == "deaf":
        release = client.releases / prediction_id
        body["input"]["release"] = str(release)
    if kind == "hung_upload":
        body["output_file_prefix"] = client.hung_prefix
    try:
        state = make(client, prediction_id, kind, body)
        if mode == "deaf" and state["status"] == "canceled":
            # Stuck a while longer, as a long native call is: the run keeps
            # its slot, and the worker must be left alone.
            time.sleep(DEAF_FOR_S)
        return state
    finally:
        if mode == "deaf":
            # The run hears its cancel now, and its slot frees.
            release.touch()


def make(client: Client, prediction_id: str, kind: str, body: dict) -> dict:
    """Creates the prediction and leaves it as a client of `kind` does."""
    if kind == "hang_up":
        return client.hang_up(prediction_id, body)
    if kind in ("timeout", "deaf_timeout"):
        return client.time_out(prediction_id, body)
    if kind in ("ok", "raise", "crash", "file", "hung_upload"):
        resp = client.create(prediction_id, body, wait=True)
        assert resp.status_code == 200, f"{prediction_id}: {resp.status_code} {resp.text[:500]}"
        return resp.json()
    resp = client.create(prediction_id, body, wait=False)
    assert resp.status_code == 202, f"{prediction_id}: {resp.status_code} {resp.text[:500]}"
    if kind in ("cancel", "deaf_cancel"):
        state = client.until(prediction_id, under_way(prediction_id, body["input"]["mode"]))
        if state["status"] not in TERMINAL_STATUSES:
            client.cancel(prediction_id)
    return client.terminal(prediction_id)


EXPECTED = {
    "ok": "succeeded",
    "ok_async": "succeeded",
    "file": "succeeded",
    "raise": "failed",
    "crash": "failed",
    "hung_upload": "failed",
    "cancel": "canceled",
    "hang_up": "canceled",
    "timeout": "canceled",
    "deaf_cancel": "canceled",
    "deaf_timeout": "canceled",
}


def classify(kind: str, prediction_id: str, state: dict) -> str:
    """'expected', or 'crash-collateral' for a run a worker crash took down."""
    status, error = state["status"], state.get("error") or ""
    assert status in TERMINAL_STATUSES, state
    if kind == "crash" or (status == "failed" and "worker" in error.lower()):
        assert status == "failed" and "worker" in error.lower(), (kind, prediction_id, state)
        return "expected" if kind == "crash" else "crash-collateral"
    summary = {k: state.get(k) for k in ("status", "error")}
    assert status == EXPECTED[kind], (kind, prediction_id, summary)
    if kind in ("ok", "ok_async"):
        assert state["output"] == f"ok:{prediction_id}", state
    if kind == "file":
        encoded = base64.b64encode(prediction_id.encode()).decode()
        assert state["output"] == f"data:text/plain;base64,{encoded}", state
    if kind == "raise":
        assert "boom" in error, state
    if kind == "hung_upload":
        assert "cannot upload output file" in error and "timed out" in error, summary
    return "expected"


def hooks_for(i: int, webhook: str | None) -> dict:
    """The webhook fields of prediction i's request (half filter to `completed`)."""
    if webhook is None:
        return {}
    return {"webhook": webhook} | ({"webhook_events_filter": ["completed"]} if i % 2 else {})


def run_all(client: Client, kinds: list[tuple[str, str, dict]]) -> list[dict]:
    """Runs (prediction id, kind, webhook fields) from CLIENTS clients at once;
    returns each one's terminal state, in order."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run_one, client, *each) for each in kinds]
        return [f.result() for f in futures]


def check_webhooks(webhook_receiver, wanted: dict[str, str]) -> int:
    """Exactly one `completed` webhook, with the status its client saw, for
    each prediction in `wanted` (id -> status), and none for any other;
    returns how many came."""

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
    twice = {id_: len(calls) for id_, calls in completed.items() if len(calls) != 1}
    assert not twice, f"completed webhooks sent more than once: {twice}"
    mismatched = {
        id_: (calls[0].status, wanted[id_])
        for id_, calls in completed.items()
        if calls[0].status != wanted[id_]
    }
    assert not mismatched, mismatched
    strangers = {c.body.get("id") for c in webhook_receiver.calls_to("/soak")} - set(wanted)
    assert not strangers, strangers
    return len(completed)


def check_kept(server: Server, states: dict[str, dict]) -> int:
    """Each prediction the server still keeps says the status its client saw
    (a deaf run that returned later changed nothing); returns how many are kept."""
    kept = 0
    for prediction_id, state in states.items():
        resp = requests.get(f"{server.url}/predictions/{prediction_id}", timeout=30)
        if resp.status_code in (404, 410):
            continue  # evicted by the server's bound on finished predictions
        assert resp.status_code == 200, (prediction_id, resp.status_code, resp.text[:500])
        assert resp.json()["status"] == state["status"], (prediction_id, resp.json(), state)
        kept += 1
    return kept


def check_counted(server: Server, statuses: collections.Counter) -> dict:
    """The server counted each prediction once, as it ended; every slot is
    usable and, once the last released run has returned, free. Returns the
    worker restarts it counted."""

    def all_free() -> str | None:
        text = server.get("/metrics", timeout=10).text
        return text if metric(text, "cogd_slots_busy") == 0 else None

    text = wait_until(all_free, timeout=10, what="every slot to be free")
    label = 'status="{}"'.format
    counted = {s: metric(text, "cogd_predictions_total", label(s)) for s in TERMINAL_STATUSES}
    assert counted == {s: statuses[s] for s in TERMINAL_STATUSES}, counted
    usable = metric(text, "cogd_slots")
    assert usable == SLOTS, f"only {usable:.0f} of {SLOTS} slots left"
    return int(metric(text, "cogd_worker_restarts_total"))


def unheard_cancels(server: Server, prediction_ids: set[str]) -> tuple[set[str], set[str]]:
    """Of `prediction_ids` (cancelled while deaf), those whose run went on
    after they ended `canceled` (the server logs a warning for each), and
    those a worker crash ended within their grace period instead; from the
    server's log."""
    went_on, finished, deaths = set(), {}, []
    for line in server.stderr_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        message, prediction_id = entry.get("message", ""), entry.get("prediction_id")
        at = datetime.fromisoformat(entry["timestamp"])
        if "keeps its slot until it returns" in message:
            went_on.add(prediction_id)
        elif message == "prediction finished":
            finished[prediction_id] = at
        elif message.startswith("the worker died"):
            deaths.append(at)
    crashed = {
        id_
        for id_ in prediction_ids - went_on
        if any(timedelta(0) <= finished[id_] - death < timedelta(seconds=1) for death in deaths)
    }
    return prediction_ids & went_on, crashed


def test_soak(start_server, short_tmpdir, tmp_path, webhook_receiver, capsys):
    server = start_server(
        "soak",
        env={
            "TMPDIR": str(short_tmpdir),
            "COG_MAX_CONCURRENCY": str(SLOTS),
            "COG_MAX_WORKER_RESTARTS": str(N),
            # Restarts are spaced out, so each backs off only briefly.
            "COG_WORKER_RESTART_WINDOW": "1",
            "COG_THROTTLE_RESPONSE_INTERVAL": "0.05",
            "COG_CANCEL_GRACE": str(CANCEL_GRACE_S),
            "COG_UPLOAD_TIMEOUT": str(UPLOAD_TIMEOUT_S),
        },
    )
    pid = server.proc.pid
    silent = SilentReceiver()
    releases = tmp_path / "releases"
    releases.mkdir()
    client = Client(server, releases, silent.url("/hung/"))
    hook = webhook_receiver.url("/soak")

    # Warm-up: every slot has run, each kind of client has come and gone.
    warm = run_all(client, [(f"warm-{j}", kind, {}) for j, kind in enumerate(WARM_UP)])
    warm_statuses = collections.Counter(state["status"] for state in warm)
    fds_before = fd_count(pid)
    rss_before = proc_status_bytes(pid)
    restarts_before = int(metric(server.get("/metrics").text, "cogd_worker_restarts_total"))

    predictions = plan(N)
    watch = Watch(server)
    began = time.monotonic()
    try:
        states = run_all(
            client,
            [
                (f"soak-{i}", kind, hooks_for(i, hook if webhook else None))
                for i, (kind, webhook) in enumerate(predictions)
            ],
        )
    finally:
        watch.stop()
        silent.close()
    duration = time.monotonic() - began

    outcomes: collections.Counter = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    for i, ((kind, _), state) in enumerate(zip(predictions, states, strict=True)):
        outcomes[(kind, classify(kind, f"soak-{i}", state))] += 1
        statuses[state["status"]] += 1
    by_id = {f"soak-{i}": state for i, state in enumerate(states)}
    kept = check_kept(server, by_id)
    restarts = check_counted(server, statuses + warm_statuses) - restarts_before
    crashes = sum(kind == "crash" for kind, _ in predictions)

    # Each deaf run cancelled explicitly was deaf when the cancel came (its
    # client waited for it to say so): it ended `canceled` and went on,
    # unless a crash took its worker down within the grace period.
    deaf_cancelled = {
        f"soak-{i}"
        for i, (kind, _) in enumerate(predictions)
        if kind == "deaf_cancel" and states[i]["status"] == "canceled"
    }
    went_on, crashed = unheard_cancels(server, deaf_cancelled)
    assert went_on | crashed == deaf_cancelled, deaf_cancelled - went_on - crashed

    wanted = {f"soak-{i}": states[i]["status"] for i, (_, w) in enumerate(predictions) if w}
    webhooks_completed = check_webhooks(webhook_receiver, wanted)

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
    rss_half = watch.rss[len(watch.rss) // 2]
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
        "client_timeouts": client.timed_out,
        "deaf_cancels_run_on": len(went_on),
        "deaf_cancels_crashed": len(crashed),
        "hung_upload_attempts": silent.accepted,
        "worker_restarts": restarts,
        "crashes": crashes,
        "health_seen": dict(watch.health),
        "kept_at_end": kept,
        "webhooks_completed": webhooks_completed,
        "webhook_calls": len(webhook_receiver.calls_to("/soak")),
        "fds_before": fds_before,
        "fds_max": watch.fds_max,
        "fds_after": fds_after,
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_half_mib": round(rss_half / 2**20, 1),
        "rss_max_mib": round(max(watch.rss) / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "health_at_end": health,
        "temp_after_stop": temp_after,
    }
    with capsys.disabled():
        print("\nsoak report:", json.dumps(report, indent=2))
    if path := os.environ.get("COGD_SOAK_REPORT"):
        Path(path).write_text(json.dumps(report, indent=2) + "\n")

    assert "DEFUNCT" not in watch.health, report
    # One new worker per crash: none for a cancel, however deaf the run.
    assert restarts == crashes, report
    assert health == "READY", report
    assert temp_after == [], report
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, report
    if N // 2 >= KEPT_FINISHED:
        assert rss_after - rss_half < RSS_FLAT_LIMIT, report
