"""A reward served over HTTP (an LLM judge, a reward model): real sockets, a real HTTP server in this process,
real reward workers with the sandbox off for that function; retries on 503 come from urllib3."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reward import RewardRunner


@pytest.fixture()
def judge():
    """A judge that answers 503 to every other first attempt and scores 'yes' completions 1.0."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if len(seen) % 2 == 1:
                self.send_response(503)
                self.end_headers()
                return
            answer = json.dumps({"reward": float("yes" in body["completion"]), "judge_calls": len(seen)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/score", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_remote_reward_with_the_sandbox_off_retries_and_scores(judge):
    url, seen = judge
    spec = {"fn": "remote", "name": "judge", "sandbox": False, "timeout_s": 20,
            "args": {"url": url, "retries": 2, "backoff_s": 0.05}}
    with RewardRunner([spec, "format"], num_workers=1) as runner:
        assert runner.sandbox_level.endswith("+off")
        good, bad = runner.score([{"prompt": "p", "completion": "yes", "answer": "a"},
                                  {"prompt": "p", "completion": "no", "answer": "b"}])
    assert good.status == "ok" and good.metrics["judge"] == 1.0 and bad.metrics["judge"] == 0.0
    assert len(seen) == 4  # each sample: a 503, then the retry
    assert seen[1] == {"prompt": "p", "completion": "yes", "columns": {"answer": "a"}}


def test_remote_reward_inside_the_sandbox_cannot_connect(judge):
    url, seen = judge
    spec = {"fn": "remote", "name": "judge", "timeout_s": 10, "args": {"url": url, "retries": 0}}
    with RewardRunner([spec], num_workers=1) as runner:
        if runner.sandbox_level != "full":
            pytest.skip(f"sandbox level {runner.sandbox_level}: no network namespace on this machine")
        (res,) = runner.score([{"prompt": "p", "completion": "yes"}])
    assert res.status == "error" and "Connection" in res.error and not seen
