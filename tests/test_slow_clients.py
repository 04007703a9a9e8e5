"""Slow and idle clients cannot hold the server's connections: a client gets
COG_CLIENT_TIMEOUT to send its request head, each piece of a declared body,
and its next request on a kept-alive connection; past it the connection is
closed (a body that stopped coming fails its request). A request that is
answered slowly is not cut: the timeout is the client's, not the run's.
"""

from __future__ import annotations

import os
import socket
import time

from harness import wait_until

TIMEOUT = {"COG_CLIENT_TIMEOUT": "1"}


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Reads until the server closes; returns how long it took and what came."""
    started = time.monotonic()
    sock.settimeout(seconds)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return time.monotonic() - started, got
        got += chunk


def test_a_client_that_sends_nothing_is_closed(start_server):
    server = start_server("basic", env=TIMEOUT)
    with connect(server) as sock:
        took, got = closed_within(sock, 10)
    assert took < 5, took
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]


def test_a_head_sent_a_byte_at_a_time_is_cut_off(start_server):
    server = start_server("basic", env=TIMEOUT)
    with connect(server) as sock:
        started = time.monotonic()
        head = b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Slow: "
        try:
            for byte in head + b"a" * 100:
                sock.send(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass  # closed under us: the point
        took, _ = closed_within(sock, 10)
    assert time.monotonic() - started < 5, "the drip went on"
    assert took < 5


def test_a_declared_body_that_never_arrives_fails_its_request(start_server):
    server = start_server("basic", env=TIMEOUT)
    with connect(server) as sock:
        sock.sendall(
            b"POST /predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"input":'
        )
        took, got = closed_within(sock, 10)
    assert took < 5, took
    assert got.startswith(b"HTTP/1.1 400"), got[:300]
    assert b"cannot read the request body" in got, got[:300]
    # Nothing ran and the slot is free.
    assert server.predict_ok({"token": "after"})["status"] == "succeeded"


def test_an_idle_kept_alive_connection_is_closed(start_server):
    server = start_server("basic", env=TIMEOUT)
    with connect(server) as sock:
        sock.sendall(b"GET /health-check HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        took, _ = closed_within(sock, 10)
    assert took < 5, took


def test_hundreds_of_idle_connections_are_let_go(start_server):
    server = start_server("basic", env=TIMEOUT)
    fds = f"/proc/{server.proc.pid}/fd"
    before = len(os.listdir(fds))
    idle = [connect(server) for _ in range(200)]
    try:
        # Each is closed by the server, not by the client.
        for sock in idle:
            _, got = closed_within(sock, 10)
            assert got == b"", got[:200]
        wait_until(
            lambda: len(os.listdir(fds)) <= before + 2,
            timeout=10,
            what="the server to let go of the idle connections",
        )
        assert server.predict_ok({"token": "still"})["status"] == "succeeded"
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_answer_is_not_cut_by_the_client_timeout(start_server):
    server = start_server("basic", env=TIMEOUT)
    got = server.predict_ok({"seconds": 2.5, "token": "slow"})
    assert got["status"] == "succeeded" and got["output"] == "ok:slow", got
