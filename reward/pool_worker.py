"""One reward worker process: `python -m reward.pool_worker READ_FD WRITE_FD DUMP_FD` (see pool.py).

It reads its configuration from the pipe, imports the reward functions (as the spawning user,
so user files are readable), confines itself at the pool's level (reward/sandbox.py; a level it
cannot reach is a failed start whose error is the one-line refusal), says hello, then serves one
call at a time: run the function on a row, turn its return value into a reward or an error,
kill whatever the call left running, clear its working directory, reply. Its stdout and stderr
go to a file in its working directory, capped by the file-size rlimit; the end of that file is
added to an error's traceback. The deadline is not enforced here: the parent kills this whole
process (and its sandbox uid) when a call runs past it, so a call stuck in C code still stops.
"""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import inspect
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import traceback
from typing import Any

from reward import sandbox
from reward.protocol import MAX_REPLY_BYTES, clip, encode_reply, read_frame, write_frame
from reward.registry import RewardFn, resolve_specs
from reward.types import coerce_output, set_deadline

_LOG_NAME = ".reward-output.log"
_OUTPUT_TAIL_BYTES = 2000


def main(argv: list[str]) -> int:
    rfd, wfd, dump_fd = int(argv[1]), int(argv[2]), int(argv[3])
    frame = read_frame(rfd)
    if frame is None:
        return 1
    config = pickle.loads(frame)
    try:
        fns = resolve_specs(config["specs"])
        info = sandbox.enter_sandbox(config["limits"], config["workdir"], level=config["sandbox"])
        log_path = os.path.join(info.workdir, _LOG_NAME)
        _redirect_output(log_path)
    except sandbox.SandboxUnavailable as exc:  # one line that says why and how; no traceback
        write_frame(wfd, encode_reply({"type": "hello", "ok": False, "error": str(exc)}))
        return 1
    except BaseException:  # noqa: BLE001 - report any startup failure to the parent, then exit
        write_frame(wfd, encode_reply({"type": "hello", "ok": False, "error": traceback.format_exc()}))
        return 1
    _start_watchdog(config["parent_pid"])
    # On SIGUSR1 (sent by the parent at a deadline) write every thread's stack to dump_fd.
    faulthandler.register(signal.SIGUSR1, file=dump_fd, all_threads=True)
    hello = {"type": "hello", "ok": True, "level": info.level, "uid": info.uid, "notes": info.notes}
    write_frame(wfd, encode_reply(hello))
    while True:
        frame = read_frame(rfd)
        if frame is None:
            return 0  # the parent closed the pipe: shut down
        task = pickle.loads(frame)
        reply = _call(fns[task["fn"]], task["row"], task["timeout_s"], config["limits"], log_path)
        reply.update(type="result", id=task["id"])
        try:
            _after_call(info, log_path)
            retire = False
        except OSError:  # e.g. the call holds every descriptor it may open: no clean-up, so no next call here
            retire = True
        faulthandler.register(signal.SIGUSR1, file=dump_fd, all_threads=True)  # the call may have replaced it
        if retire:
            reply["retire"] = True  # the parent sends nothing more and replaces this worker
        body = encode_reply(reply)
        if len(body) > MAX_REPLY_BYTES:
            too_big = f"the result is {len(body)} bytes of JSON, over the {MAX_REPLY_BYTES}-byte limit"
            reply = {"type": "result", "id": task["id"], "status": "error", "error": too_big, "traceback": "",
                     "retire": retire}
            body = encode_reply(reply)
        write_frame(wfd, body)
        if retire:
            return 1  # the parent replaces a worker that exits


def _call(rfn: RewardFn, row: dict[str, Any], timeout_s: float, limits: sandbox.Limits, log_path: str) -> dict[str, Any]:
    set_deadline(timeout_s)
    sandbox.set_cpu_budget(timeout_s)
    try:
        out = rfn(row)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        reward, metrics, stratum = coerce_output(out)
        return {"status": "ok", "reward": reward, "metrics": metrics, "stratum": stratum}
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a reward fn is an error too
        tb = traceback.format_exc()
        tail = _output_tail(log_path)
        if tail:
            tb += f"\n--- last output of the call ---\n{tail}"
        return {"status": "error", "error": _summary(exc, limits), "traceback": clip(tb)}
    finally:
        set_deadline(None)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _summary(exc: BaseException, limits: sandbox.Limits) -> str:
    """One line naming the error, and the limit behind it when a limit caused it."""
    text = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, MemoryError):
        return f"{text} (out of memory under memory_limit_mb={limits.memory_mb})"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return f"{text} (wrote past the {limits.file_size_mb} MB file-size limit; printed output counts)"
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        return f"{text} (open-file limit max_open_files={limits.max_open_files} reached)"
    if isinstance(exc, OSError) and exc.errno == errno.EAGAIN and _raised_by_fork(exc):
        return f"{text} (process limit max_processes={limits.max_processes} reached)"
    return text


def _raised_by_fork(exc: BaseException) -> bool:
    """Whether the innermost Python frame was starting a process (os.fork, subprocess, posix_spawn).

    Reads the code objects, not the source text: under a fork bomb, or for a file the sandbox cannot read,
    the traceback has no source lines."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    names = set(tb.tb_frame.f_code.co_names)
    return bool(names & {"fork", "forkpty", "fork_exec", "_fork_exec", "posix_spawn", "posix_spawnp", "spawnv"})


def _after_call(info: sandbox.SandboxInfo, log_path: str) -> None:
    """Leave the worker as it was before the call."""
    signal.alarm(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    sandbox.kill_strays(info)
    os.chdir(info.workdir)
    for entry in os.listdir(info.workdir):
        path = os.path.join(info.workdir, entry)
        if path == log_path:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    _redirect_output(log_path)


def _redirect_output(log_path: str) -> None:
    """Point fds 1 and 2 at an empty log file (fresh text wrappers: old ones may hold a failed write)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")


def _output_tail(log_path: str) -> str:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _OUTPUT_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _start_watchdog(parent_pid: int) -> None:
    """Exit when the parent is gone (it can no longer kill us), even in the middle of a call."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="reward-watchdog", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
