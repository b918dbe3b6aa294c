"""The reward sandbox fails closed (issue 12, items 1, 5 and 6 in part), with real worker processes.

- a required level that cannot be reached refuses to start, with one line naming the level reached, why,
  and how to get the one required; the start-up check (launch/prepare.py) fails with that line, in seconds.
  An unreachable level is simulated honestly: sandbox.TEST_DENY_ENV makes sandbox.py skip the named paths
  before trying them (it says so in the message); on a machine where they fail anyway, the real reason shows;
- `code` refuses to run below its required level, in a runner and in-process;
- the level is exact and config accepts the old booleans;
- workers get an environment allowlist: planted secrets do not reach a reward; `env` opts in by name;
- RLIMIT_NOFILE: opening 1000 files fails with EMFILE; the next call (a fresh process) has its descriptors.
- confinement is atomic: an import-time thread of a reward module is inside the sandbox.
Bounded quarantine records (item 5) are in tests/unit/test_reward_quarantine.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from reward import RewardRunner, RewardSpecError, RewardWorkerError
from reward import code as code_module
from reward.sandbox import TEST_DENY_ENV, SandboxUnavailable

HERE = os.path.abspath(__file__)
SECRETS = {"WANDB_API_KEY": "planted-wandb-7f3a", "HF_TOKEN": "planted-hf-7f3a", "AWS_SECRET_ACCESS_KEY": "planted-aws-7f3a",
           "RAY_AUTH_TOKEN_PLANTED": "planted-ray-7f3a"}


def constant(prompt, completion, **sample):
    return 0.5


def env_leak(prompt, completion, **sample):
    """Whether a planted secret is visible in os.environ, and in the parent's /proc/PID/environ."""
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            parent = f.read().decode(errors="replace")
    except OSError:
        parent = ""
    return {"reward": 0.0, "in_environ": float("planted-" in "".join(os.environ.values())),
            "in_parent_proc": float("planted-" in parent)}


def env_has(prompt, completion, *, name, **sample):
    return float(name in os.environ)


def where(prompt, completion, **sample):
    return {"reward": 0.0, "home_private": float(os.environ.get("HOME") == os.getcwd())}


def open_many(prompt, completion, *, n, **sample):
    return float(len([os.open("/dev/null", os.O_RDONLY) for _ in range(n)]))


def _row(**cols):
    return {"prompt": "p", "completion": "c", **cols}


def _reachable(level: str) -> bool:
    try:
        with RewardRunner([f"{HERE}:constant"], timeout_s=10.0, num_workers=1, sandbox=level):
            return True
    except RewardWorkerError:
        return False


# -- 1. fail closed --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deny, required", [("root", "full"), ("root,userns", "full"), ("userns", "userns")])
def test_unreachable_level_refuses_to_start_with_one_line(monkeypatch, deny, required):
    monkeypatch.setenv(TEST_DENY_ENV, deny)
    start = time.monotonic()
    with pytest.raises(RewardWorkerError) as info:
        RewardRunner([f"{HERE}:constant"], timeout_s=5.0, num_workers=2, sandbox=required)
    assert time.monotonic() - start < 30
    line = str(info.value).strip().splitlines()[-1]
    assert line.startswith(f"reward sandbox: level {required} is required but only "), line
    reached = line.split("but only ", 1)[1].split()[0]
    assert reached in ("userns", "rlimits") and reached != required
    if "userns" in deny:
        assert reached == "rlimits"
    assert f"{TEST_DENY_ENV}={deny}" in line  # the simulation is named, never passed off as the real reason
    assert f"to get {required}: " in line and f"reward.sandbox={reached}" in line


def test_the_start_up_check_fails_in_seconds_with_the_refusal(monkeypatch):
    from launch.config import ConfigError, load_config
    from launch.prepare import probe_rewards

    monkeypatch.setenv(TEST_DENY_ENV, "root,userns")
    cfg = load_config(None, [f"reward.fns=['{HERE}:constant']", "reward.sandbox=full"])
    rows = [{"prompt_text": "q", "fields": {"answer": "1"}}]
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        probe_rewards(cfg, lambda text, **kw: {"input_ids": [1]}, [("data.train", "x.jsonl", rows)])
    assert time.monotonic() - start < 30
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("reward.fns: the reward workers could not start: reward sandbox: level full is "
                               "required but only rlimits can be reached here"), lines[0]
    assert "reward.sandbox=rlimits" in lines[0]


THREADED = """
import os, socket, threading
seen = {}

def probe():  # at import time, in a thread of its own: it must be inside the sandbox like the rest
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=1.0).close()
        seen["net"] = 1.0
    except OSError:
        seen["net"] = 0.0
    seen["host_file"] = float(os.path.exists(HOST_FILE))
    seen["pid"] = float(os.getpid())

if os.environ.get("REWARD_SANDBOX_LEVEL"):  # in a reward worker (the runner imports the module too, to check it)
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()

def fn(prompt, completion, **sample):
    return {"reward": 1.0, **seen}
"""


@pytest.mark.parametrize("level", ["full", "userns"])
def test_a_thread_started_at_import_time_is_inside_the_sandbox(tmp_path, level):
    """The worker confines itself before it imports the reward module, so a thread the module starts at import
    time has no network, no view of the host's files and lives in the sandbox's PID namespace (unshare() would
    move only the calling thread, so confining after the import left such a thread outside)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    host_file = tmp_path / "host-only.txt"
    host_file.write_text("dataset")
    path = tmp_path / f"threaded_{level}.py"
    path.write_text(f"PORT = {listener.getsockname()[1]}\nHOST_FILE = {str(host_file)!r}\n" + THREADED)
    try:
        with RewardRunner([f"{path}:fn"], timeout_s=5.0, num_workers=1, sandbox=level) as runner:
            [result] = runner.score([_row()])
        assert result.status == "ok", result
        assert result.metrics == {"fn": 1.0, "fn/net": 0.0, "fn/host_file": 0.0, "fn/pid": 1.0}, result.metrics
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_namespaces_are_entered_only_by_a_single_threaded_process(tmp_path):
    """The check that makes confinement atomic: a process that already runs a second thread is refused."""
    script = ("import threading, time\n"
              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
              "from reward import sandbox\n"
              f"sandbox.enter_sandbox(sandbox.Limits(), {str(tmp_path)!r}, level='userns')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "SandboxUnavailable" in last and "the process has 2 threads" in last, last
    assert "start no thread before the sandbox is entered" in last


def test_a_lower_level_chosen_explicitly_is_the_level_in_force(monkeypatch):
    with RewardRunner([f"{HERE}:constant"], timeout_s=5.0, num_workers=1, sandbox="rlimits") as runner:
        assert runner.sandbox_level == "rlimits"  # exact: not upgraded to what the machine could do
        assert [r.reward for r in runner.score([_row()])] == [0.5]
    monkeypatch.setenv(TEST_DENY_ENV, "root")
    if not _reachable("userns"):
        pytest.skip("no user namespaces on this machine")
    with RewardRunner([f"{HERE}:constant", {"fn": f"{HERE}:where", "sandbox": False}], timeout_s=5.0,
                      num_workers=1, sandbox="userns") as runner:
        assert runner.sandbox_level == "userns+off"
        [result] = runner.score([_row()])
        assert result.reward == 0.5 and result.metrics["where/home_private"] == 1.0


def test_code_refuses_below_its_required_level(monkeypatch):
    assert code_module.code_reward.required_sandbox == "userns"
    for kwargs, specs in [({"sandbox": "rlimits"}, ["code"]), ({}, [{"fn": "code", "sandbox": "off"}])]:
        with pytest.raises(RewardSpecError, match=r"requires sandbox level userns or stronger, but runs at"):
            RewardRunner(specs, timeout_s=5.0, num_workers=1, **kwargs)
    # in-process, outside any sandbox: the one-shot children cannot confine themselves, so nothing runs
    monkeypatch.setenv(TEST_DENY_ENV, "root,userns")
    with pytest.raises(SandboxUnavailable, match=r"code verifier: reward sandbox: level userns is required but "
                                                 r"only rlimits"):
        code_module.code_reward("p", "print(1)", tests=[{"input": "", "output": "1"}])


def test_a_function_declares_its_own_minimum(tmp_path):
    path = tmp_path / "needs_full.py"
    path.write_text("def fn(prompt, completion, **s):\n    return 1.0\nfn.required_sandbox = 'full'\n")
    with pytest.raises(RewardSpecError, match=r"requires sandbox level full or stronger, but runs at userns"):
        RewardRunner([f"{path}:fn"], timeout_s=5.0, num_workers=1, sandbox="userns")
    path = tmp_path / "needs_max.py"  # another file: a file's module is imported once per process
    path.write_text("def fn(prompt, completion, **s):\n    return 1.0\nfn.required_sandbox = 'max'\n")
    with pytest.raises(RewardSpecError, match=r"required_sandbox='max'"):
        RewardRunner([f"{path}:fn"], timeout_s=5.0, num_workers=1)


def test_config_levels_and_the_old_booleans(tmp_path):
    from launch.config import ConfigError, load_config, save_config

    assert load_config(None, []).reward.sandbox == "full"
    assert load_config(None, ["reward.sandbox=true"]).reward.sandbox == "full"
    assert load_config(None, ["reward.sandbox=false"]).reward.sandbox == "off"
    assert load_config(None, ["reward.sandbox=userns"]).reward.sandbox == "userns"
    with pytest.raises(ConfigError, match=r"reward.sandbox='strict': use one of full, userns, rlimits, off"):
        load_config(None, ["reward.sandbox=strict"])
    cfg = load_config(None, ["reward.fns=[{fn: arith, sandbox: false}]"])
    assert cfg.reward.fns == [{"fn": "arith", "sandbox": "off"}]
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "sandbox: full" in text and ("sandbox: 'off'" in text or "sandbox: off" in text), text
    with pytest.raises(RewardSpecError, match=r"sandbox='maybe'"):
        RewardRunner([{"fn": "arith", "sandbox": "maybe"}], timeout_s=5.0)


# -- 6. environment allowlist ----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["full", "rlimits", "off"])
def test_planted_secrets_do_not_reach_a_reward(monkeypatch, level):
    if level == "full" and os.geteuid() != 0:
        pytest.skip("level full needs root")
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    specs = [f"{HERE}:env_leak", f"{HERE}:where",
             *({"fn": f"{HERE}:env_has", "name": f"has_{k}", "args": {"name": k}} for k in SECRETS)]
    with RewardRunner(specs, timeout_s=5.0, num_workers=1, sandbox=level) as runner:
        [result] = runner.score([_row()])
    assert result.status == "ok", result
    assert result.metrics["env_leak/in_environ"] == 0.0
    assert all(result.metrics[f"has_{k}"] == 0.0 for k in SECRETS), result.metrics
    assert result.metrics["where/home_private"] == 1.0
    if level == "full":  # another uid: the parent's /proc/PID/environ is closed too
        assert result.metrics["env_leak/in_parent_proc"] == 0.0
    # below full the parent's /proc/PID/environ stays readable (same uid, no PID namespace: issue 12, item 3)


def test_env_opt_in_reaches_only_the_function_that_names_it(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    specs = [{"fn": f"{HERE}:env_has", "name": "judge", "sandbox": "off", "env": ["JUDGE_TEST_KEY"],
              "args": {"name": "JUDGE_TEST_KEY"}},
             {"fn": f"{HERE}:env_has", "name": "other", "sandbox": "off", "args": {"name": "JUDGE_TEST_KEY"}}]
    with RewardRunner(specs, timeout_s=5.0, num_workers=1) as runner:
        [result] = runner.score([_row()])
    assert (result.metrics["judge"], result.metrics["other"]) == (1.0, 0.0)
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with pytest.raises(RewardSpecError, match=r"env names \['JUDGE_TEST_KEY'\], not set"):
        RewardRunner(specs, timeout_s=5.0, num_workers=1)
    with pytest.raises(RewardSpecError, match=r"env \['TMPDIR'\]: set by the reward pool itself"):
        RewardRunner([{"fn": "arith", "env": ["TMPDIR"]}], timeout_s=5.0, num_workers=1)
    with pytest.raises(RewardSpecError, match=r"env must be a list of environment variable names"):
        RewardRunner([{"fn": "arith", "env": ["NOT A NAME"]}], timeout_s=5.0, num_workers=1)


# -- 5. RLIMIT_NOFILE -----------------------------------------------------------------------------------------


def test_opening_1000_files_fails_with_emfile_and_the_next_call_starts_clean(tmp_path):
    level = "full" if os.geteuid() == 0 else "rlimits"
    quarantine = tmp_path / "q.jsonl"
    with RewardRunner([f"{HERE}:open_many"], timeout_s=5.0, num_workers=1, sandbox=level,
                      quarantine_path=str(quarantine)) as runner:
        first, second = runner.score([_row(n=1000), _row(n=20)])
        assert first.status == "error" and "Too many open files" in first.error, first
        assert "open-file limit max_open_files=256" in first.error
        assert (second.status, second.reward) == ("ok", 20.0), second  # its descriptors died with its process
        assert runner.worker_restarts == 0
    # the test process holding 200 more files (as a Ray actor or a long test session may) must not lift the
    # worker's limit: its pipes arrive under high descriptor numbers, and the worker renumbers them
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
    try:
        with RewardRunner([f"{HERE}:open_many"], timeout_s=5.0, num_workers=1, sandbox=level,
                          max_open_files=64) as runner:
            [result] = runner.score([_row(n=100)])
    finally:
        for fd in held:
            os.close(fd)
    assert "max_open_files=64" in (result.error or ""), result
    with pytest.raises(ValueError, match="max_open_files"):
        RewardRunner(["arith"], max_open_files=8)
