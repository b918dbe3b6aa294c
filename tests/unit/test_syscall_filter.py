"""The seccomp denylist (reward/syscall_filter.py): every denied call fails with EPERM (clone3: ENOSYS) in a
filtered process, ordinary process, thread, file and socket use keeps working, a thread started before the
filter is covered, another ABI kills the process. The filter is only ever installed in a child process
(`python -c`), never in the pytest process."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import textwrap

import pytest

from reward import syscall_filter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_UNAVAILABLE = syscall_filter.available()
needs_seccomp = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no seccomp filter here: {_UNAVAILABLE}")
x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="foreign-ABI calls are written for x86_64")

# Run in a child: install the filter (unless told not to), then the test's code, which prints one JSON line.
_PRELUDE = """
import ctypes, errno, json, os, sys
from reward.syscall_filter import install_denylist
libc = ctypes.CDLL(None, use_errno=True)
DENIED = install_denylist() if sys.argv[1] == "filtered" else None

def errno_of(ret):
    '''"ok" when a libc call succeeded, else the errno's name.'''
    return "ok" if ret != -1 else errno.errorcode[ctypes.get_errno()]
"""


def run_child(code: str, filtered: bool = True) -> subprocess.CompletedProcess:
    """Run `code` after the prelude in a fresh interpreter, with the filter installed when `filtered`."""
    source = _PRELUDE + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source, "filtered" if filtered else "unfiltered"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                          timeout=120)


def child_result(code: str, filtered: bool = True):
    """The JSON printed last by `code` run in a child that must exit 0."""
    proc = run_child(code, filtered)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# One probe per denied call: arguments that are harmless and fail with another errno (or succeed) when
# unfiltered, so that EPERM can only come from the filter (the control test checks this, as root).
_NOWHERE = "/nonexistent-seccomp-probe"
_AT_FDCWD = -100
_CLONE_SIGHAND = 0x00000800  # without CLONE_VM: EINVAL before any namespace is made
PROBES = {
    "unshare(CLONE_NEWUSER)": ("unshare", [0x10000000]),
    "setns": ("setns", [-1, 0]),
    **{f"clone({flag})": ("clone", [value | _CLONE_SIGHAND, 0, 0, 0, 0])
       for flag, value in syscall_filter.NAMESPACE_CLONE_FLAGS.items()},
    "io_uring_setup": ("io_uring_setup", [1, None]),
    "io_uring_enter": ("io_uring_enter", [-1, 0, 0, 0, None, 0]),
    "io_uring_register": ("io_uring_register", [-1, 0, None, 0]),
    "ptrace(PTRACE_TRACEME)": ("ptrace", [0, 0, 0, 0]),
    "process_vm_readv": ("process_vm_readv", [0, None, 0, None, 0, 0]),
    "process_vm_writev": ("process_vm_writev", [0, None, 0, None, 0, 0]),
    "kcmp": ("kcmp", [-1, -1, 0, 0, 0]),
    "pidfd_getfd": ("pidfd_getfd", [-1, 0, 0]),
    "mount": ("mount", ["none", _NOWHERE, "tmpfs", 0, None]),
    "umount2": ("umount2", [_NOWHERE, 0]),
    "pivot_root": ("pivot_root", [_NOWHERE, _NOWHERE]),
    "chroot": ("chroot", [_NOWHERE]),
    "move_mount": ("move_mount", [_AT_FDCWD, _NOWHERE, _AT_FDCWD, _NOWHERE, 0]),
    "open_tree": ("open_tree", [_AT_FDCWD, _NOWHERE, 0]),
    "fsopen": ("fsopen", ["nonexistent-seccomp-fs", 0]),
    "fsmount": ("fsmount", [-1, 0, 0]),
    "fsconfig": ("fsconfig", [-1, 0, None, None, 0]),
    "fspick": ("fspick", [_AT_FDCWD, _NOWHERE, 0]),
    "mount_setattr": ("mount_setattr", [_AT_FDCWD, _NOWHERE, 0, None, 0]),
    "bpf": ("bpf", [0xFFFF, None, 0]),
    "perf_event_open": ("perf_event_open", [None, 0, -1, -1, 0]),
    "userfaultfd": ("userfaultfd", [0xFFFFFFFF]),
    "keyctl": ("keyctl", [0, 0, 0]),
    "add_key": ("add_key", [None, None, None, 0, 0]),
    "request_key": ("request_key", [None, None, None, 0]),
    "kexec_load": ("kexec_load", [0, 0, None, 0xFFFF0000]),
    "kexec_file_load": ("kexec_file_load", [-1, -1, 0, None, 0xFFFF0000]),
    "init_module": ("init_module", [None, 0, None]),
    "finit_module": ("finit_module", [-1, "", 0]),
    "delete_module": ("delete_module", ["nonexistent_seccomp_probe", 0]),
    "reboot": ("reboot", [0, 0, 0, None]),  # a wrong magic number: EINVAL before anything else
    "swapon": ("swapon", [_NOWHERE, 0]),
    "swapoff": ("swapoff", [_NOWHERE]),
    "acct": ("acct", [_NOWHERE + "/file"]),
    "quotactl": ("quotactl", [0, _NOWHERE, 0, None]),
    "quotactl_fd": ("quotactl_fd", [-1, 0, 0, None]),
    "syslog": ("syslog", [10, None, 0]),  # SYSLOG_ACTION_SIZE_BUFFER: reads a number
    "lookup_dcookie": ("lookup_dcookie", [0, None, 0]),
    "name_to_handle_at": ("name_to_handle_at", [_AT_FDCWD, _NOWHERE, None, None, 0]),
    "open_by_handle_at": ("open_by_handle_at", [-1, None, 0]),
    "personality(ADDR_NO_RANDOMIZE)": ("personality", [0x0040000]),
}

# Each probe runs in a forked child of its own, so that one that succeeds unfiltered (unshare, TRACEME,
# personality) changes nothing for the next; prints {probe: "ok" | errno name | "absent"}.
_RUN_PROBES = """
seccomp = ctypes.CDLL("libseccomp.so.2")
seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

def arg(value):
    if value is None or isinstance(value, str):
        return ctypes.c_char_p(None if value is None else value.encode())
    return ctypes.c_long(value)

results = {}
for probe, (name, args) in json.loads(sys.argv[2]).items():
    number = seccomp.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        results[probe] = "absent"
        continue
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, errno_of(libc.syscall(ctypes.c_long(number), *map(arg, args))).encode())
        os._exit(0)
    os.close(write_end)
    results[probe] = os.read(read_end, 100).decode() or "the probe's child died"
    os.close(read_end)
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


def run_probes(filtered: bool) -> dict[str, str]:
    """{probe: outcome} for every PROBES entry, in a filtered (or unfiltered) child."""
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + _RUN_PROBES, "filtered" if filtered else "no",
                           json.dumps(PROBES)], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def filtered_probes():
    return run_probes(filtered=True)


@needs_seccomp
@pytest.mark.parametrize("probe", list(PROBES))
def test_denied_call_fails_with_eperm(filtered_probes, probe):
    if filtered_probes[probe] == "absent":
        pytest.skip(f"{PROBES[probe][0]} is not a syscall of this architecture")
    assert filtered_probes[probe] == "EPERM"


@needs_seccomp
@pytest.mark.skipif(os.geteuid() != 0, reason="without root's capabilities the unfiltered probes fail with EPERM too")
def test_probes_do_not_fail_with_eperm_without_the_filter():
    """The control for the test above: its EPERMs come from the filter, not from the probes' arguments."""
    eperm = [probe for probe, outcome in run_probes(filtered=False).items() if outcome == "EPERM"]
    assert eperm == []


@needs_seccomp
def test_install_returns_the_denied_names_of_this_architecture():
    denied = child_result("print(json.dumps(DENIED))")
    every_name = [name for _group, names in syscall_filter.DENYLIST for name in names]
    assert set(denied) <= set(every_name)
    assert {"unshare", "setns", "clone", "clone3", "io_uring_setup", "ptrace", "mount", "bpf", "keyctl"} <= set(denied)


@needs_seccomp
def test_python_level_calls_raise_permission_error():
    result = child_result("""
        out = {}
        ctypes.set_errno(0)
        out["libc unshare"] = errno_of(libc.unshare(0x10000000))
        if hasattr(os, "unshare"):
            try:
                os.unshare(os.CLONE_NEWUSER)
                out["os.unshare"] = "ok"
            except PermissionError:
                out["os.unshare"] = "PermissionError"
        try:
            os.chroot("/")
            out["os.chroot"] = "ok"
        except PermissionError:
            out["os.chroot"] = "PermissionError"
        print(json.dumps(out))
    """)
    assert result["libc unshare"] == "EPERM" and result["os.chroot"] == "PermissionError"
    assert result.get("os.unshare", "PermissionError") == "PermissionError"


@needs_seccomp
def test_clone3_fails_with_enosys_so_glibc_falls_back_to_clone():
    result = child_result("""
        print(json.dumps(errno_of(libc.syscall(ctypes.c_long(435), None, ctypes.c_long(0)))))
    """)
    assert result == "ENOSYS"


@needs_seccomp
def test_fork_threads_spawn_files_and_sockets_still_work(tmp_path):
    result = child_result(f"""
        import socket, subprocess, threading
        out = {{}}
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        seen = []
        thread = threading.Thread(target=seen.append, args=("ran",))
        thread.start()
        thread.join()
        out["thread"] = seen
        out["subprocess"] = subprocess.run(["/bin/true"]).returncode
        out["python"] = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True,
                                       text=True).stdout.strip()
        spawned = os.posix_spawn("/bin/true", ["/bin/true"], dict(os.environ))
        out["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(spawned, 0)[1])
        path = os.path.join({str(tmp_path)!r}, "f.txt")
        with open(path, "w") as f:
            f.write("data")
        out["file"] = open(path).read()
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM), socket.socket(socket.AF_UNIX),
                   *socket.socketpair()]
        out["sockets"] = len(sockets)
        out["personality(PER_LINUX)"] = errno_of(libc.personality(0))
        print(json.dumps(out))
    """)
    assert result == {"fork": 7, "thread": ["ran"], "subprocess": 0, "python": "42", "posix_spawn": 0,
                      "file": "data", "sockets": 4, "personality(PER_LINUX)": "ok"}


@needs_seccomp
def test_a_thread_started_before_the_filter_is_filtered_too():
    """TSYNC: the filter goes on every thread, so a thread from import time cannot mount or unshare."""
    result = child_result("""
        import threading
        go, out = threading.Event(), {}

        def later():
            go.wait()
            out["mount"] = errno_of(libc.mount(b"none", b"/nonexistent-seccomp-probe", b"tmpfs", 0, None))
            out["chroot"] = errno_of(libc.chroot(b"/nonexistent-seccomp-probe"))

        thread = threading.Thread(target=later)
        thread.start()
        install_denylist()
        go.set()
        thread.join()
        print(json.dumps(out))
    """, filtered=False)
    assert result == {"mount": "EPERM", "chroot": "EPERM"}


@needs_seccomp
@x86_64_only
def test_an_x32_syscall_kills_the_process():
    proc = run_child("libc.syscall(ctypes.c_long(0x40000000 | 39))  # x32 getpid\nprint('survived')")
    assert proc.returncode == -signal.SIGSYS and "survived" not in proc.stdout


_I386_GETPID = """
import mmap
code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20 (i386 getpid); int 0x80; ret
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print(json.dumps(ctypes.CFUNCTYPE(ctypes.c_int)(address)() == os.getpid()))
"""


@needs_seccomp
@x86_64_only
def test_an_i386_syscall_kills_the_process():
    control = run_child(_I386_GETPID, filtered=False)
    if control.returncode != 0 or control.stdout.strip() != "true":
        pytest.skip(f"this kernel does not run i386 syscalls from 64-bit code (rc {control.returncode})")
    proc = run_child(_I386_GETPID)
    assert proc.returncode == -signal.SIGSYS and proc.stdout == ""


def test_available_names_a_missing_library_and_the_fix():
    """The refusal when libseccomp cannot be loaded, simulated with a library name that does not exist."""
    missing = "libseccomp-missing-for-test.so.2"
    reason = syscall_filter.available(library_name=missing)
    assert reason is not None and missing in reason and "apt-get install libseccomp2" in reason
    assert "\n" not in reason
    with pytest.raises(OSError, match="apt-get install libseccomp2"):
        syscall_filter.install_denylist(library_name=missing)  # refused before anything is installed


def test_importable_as_a_sibling_module_under_isolated_mode():
    """reward/sandbox.py run as a script with `python -I` imports it as `syscall_filter`."""
    proc = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import syscall_filter; print(syscall_filter.available())", os.path.join(REPO, "reward")],
                          cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(_UNAVAILABLE)
