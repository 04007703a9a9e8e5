"""Size limits: an input too large for one protocol frame still reaches the
run whole (it travels through a file), and a request body over
COG_MAX_BODY_BYTES is refused with a JSON 413 while the server keeps serving.
"""

import hashlib

from harness import assert_json_error


def test_an_8_mib_input_reaches_the_run_whole(start_server):
    server = start_server("echo")
    text = "abcdefgh" * (1024 * 1024)  # 8 MiB, past the 8 MiB frame limit with its envelope
    prediction = server.predict_ok({"text": text}, timeout=60)
    assert prediction["status"] == "succeeded", prediction.get("error")
    assert prediction["output"]["length"] == len(text)
    assert prediction["output"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_a_body_over_the_limit_is_refused_with_413(start_server):
    server = start_server("echo", env={"COG_MAX_BODY_BYTES": "10000"})
    assert_json_error(server.predict({"text": "x" * 20000}), 413)
    assert server.predict_ok({"text": "small"})["output"]["length"] == 5
