"""Rewards that need the network: an LLM judge or a reward model behind HTTP.

    reward.fns=[{fn: remote, sandbox: off, timeout_s: 60,
                 args: {url: "http://judge:8000/score", retries: 3}}]

`remote_reward` POSTs one sample as JSON, {"prompt", "completion", "columns": {dataset columns}},
and takes the response body as the reward: a number, or an object {"reward": float, ...metrics}
(what any reward function may return). Write your own judge call with `post_json`, which adds
the same deadline and retries to any JSON endpoint.

Retries come from urllib3's `Retry` (connection errors, and 429/500/502/503/504 answers, with
exponential back-off, honouring Retry-After), mounted on a `requests` session kept per worker
process. Every request's timeout is the time left of the call's deadline (`reward.time_left`),
so retries never outlive the reward timeout. The sandbox blocks the network: such a function
needs `sandbox: off` in its entry (the start-up check says so when it cannot connect).
"""

from __future__ import annotations

import json
import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from reward.types import time_left

RETRY_STATUSES = (429, 500, 502, 503, 504)
_sessions: dict[tuple[int, int, float], requests.Session] = {}


def session(retries: int = 3, backoff_s: float = 0.5) -> requests.Session:
    """A pooled session for this process that retries POSTs on connection errors and RETRY_STATUSES."""
    key = (os.getpid(), retries, backoff_s)
    if key not in _sessions:
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff_s,
                      status_forcelist=RETRY_STATUSES, allowed_methods=None, respect_retry_after_header=True,
                      raise_on_status=False)
        s = requests.Session()
        s.mount("http://", HTTPAdapter(max_retries=retry))
        s.mount("https://", HTTPAdapter(max_retries=retry))
        _sessions[key] = s
    return _sessions[key]


def post_json(url: str, payload: Any, *, timeout_s: float | None = None, retries: int = 3, backoff_s: float = 0.5,
              headers: dict[str, str] | None = None) -> Any:
    """POST `payload` as JSON and return the decoded JSON answer; raises on a non-2xx final answer.
    The timeout is `timeout_s` capped by the time left of the current reward call."""
    limit = time_left(default=timeout_s or 30.0)
    timeout = min(timeout_s, limit) if timeout_s else limit
    body = json.dumps(payload, default=str)
    response = session(retries, backoff_s).post(url, data=body, timeout=max(timeout, 0.1),
                                                headers={"Content-Type": "application/json", **(headers or {})})
    response.raise_for_status()
    return response.json()


def remote_reward(prompt: str, completion: str, *, url: str, timeout_s: float | None = None, retries: int = 3,
                  backoff_s: float = 0.5, headers: dict[str, str] | None = None, **columns: Any) -> Any:
    """The reward an HTTP endpoint gives this sample (see the module docstring)."""
    return post_json(url, {"prompt": prompt, "completion": completion, "columns": columns}, timeout_s=timeout_s,
                     retries=retries, backoff_s=backoff_s, headers=headers)
