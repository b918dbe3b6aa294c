"""A seccomp denylist for sandboxed reward processes: the system calls untrusted code has no use for.

`install_denylist()` installs, in the calling process, a filter whose default action is ALLOW and
which makes the calls below fail with EPERM, so that Python code gets a PermissionError and a reward
function fails cleanly instead of the process dying. It is meant to be the last step of confinement
(`reward/sandbox.py`): it denies `unshare` and `mount` themselves, so namespaces and mounts must be in
place first, and every process started afterwards inherits it. `available()` says, in one line, why
a filter cannot be installed here.

Denied, group by group (`DENYLIST` holds the same list):

  namespaces   unshare, setns; clone with a namespace flag (masked-equality rules on the flags, so
               fork, vfork, threads and posix_spawn still work): a new user namespace gives full
               capabilities inside it and opens kernel code unprivileged users otherwise cannot reach.
               clone3 fails with ENOSYS instead, because its flags sit in memory a filter cannot read:
               glibc then falls back to clone, whose flags are checked. CLONE_NEWTIME is not checked
               on clone: its bit is clone's exit-signal byte there, and the kernel only reads it as a
               namespace flag from unshare and clone3, both denied.
  io_uring     io_uring_setup/enter/register: its operations run without passing through seccomp, and
               it has been a steady source of kernel exploits.
  tracing      ptrace, process_vm_readv/writev, kcmp, pidfd_getfd: reading or steering another process
               (the worker that runs the next call, a sibling) or taking its file descriptors.
  mounts       mount, umount2, pivot_root, chroot and the new mount API (move_mount, open_tree, fsopen,
               fsmount, fsconfig, fspick, mount_setattr): undoing the private /tmp or reaching host paths.
  kernel       bpf, perf_event_open, userfaultfd: large kernel attack surfaces (userfaultfd is the usual
               way to widen a kernel race).
  keyrings     keyctl, add_key, request_key: the kernel keyrings are not namespaced per sandbox.
  host admin   kexec_load, kexec_file_load, init_module, finit_module, delete_module, reboot, swapon,
               swapoff, acct, quotactl, quotactl_fd, syslog (the kernel log, with kernel addresses; the
               `syslog` module writes to /dev/log and is unaffected), lookup_dcookie: administration of
               the host, reachable where a worker keeps root's capabilities (level `rlimits` as root).
  handles      name_to_handle_at, open_by_handle_at: opening files by handle walks around mount and
               chroot boundaries.
  personality  personality with any argument other than 0 (PER_LINUX, the default; the 0xffffffff query
               is refused too): other personas turn off address randomisation or make data executable.

Other ABIs cannot bypass it: the filter covers the native architecture only, and a call through
another one (i386's int 0x80 or x32's numbers on x86_64) kills the whole process (bad-arch action
KILL_PROCESS), since no Python code makes such calls. It is installed on all threads of the process
(SCMP_FLTATR_CTL_TSYNC), so a thread started before it, at import time say, is covered too, and it
sets no_new_privs (needed to install a filter without CAP_SYS_ADMIN). A syscall newer than the
installed libseccomp does not know is not denied; the returned list says what is.

Why ctypes: PyPI has no maintained binding with wheels (libseccomp's own Python bindings are not
published there, Debian ships them as python3-seccomp for the system Python only, pyseccomp was last
released in 2021 and seccompy builds its own BPF instead of using libseccomp), while libseccomp.so.2
itself is on every Debian/Ubuntu system (apt and systemd depend on it). Standard library only, and no
package-relative imports: `reward/code_child.py` run as a script with `python -I` imports `sandbox`,
which imports this file as the sibling module `syscall_filter`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

LIBRARY_NAME = "libseccomp.so.2"
"""The shared library loaded by `available()` and `install_denylist()` unless they are given another name."""

DENYLIST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("namespaces", ("unshare", "setns", "clone", "clone3")),
    ("io_uring", ("io_uring_setup", "io_uring_enter", "io_uring_register")),
    ("tracing", ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd")),
    ("mounts", ("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
                "fsmount", "fsconfig", "fspick", "mount_setattr")),
    ("kernel", ("bpf", "perf_event_open", "userfaultfd")),
    ("keyrings", ("keyctl", "add_key", "request_key")),
    ("host admin", ("kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
                    "lookup_dcookie")),
    ("handles", ("name_to_handle_at", "open_by_handle_at")),
    ("personality", ("personality",)),
)
"""Denied syscalls by group, in the order of the module docstring, which says why each group is denied."""

NAMESPACE_CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
"""clone() fails with EPERM when its flags hold any of these (CLONE_NEWTIME: see the module docstring)."""

_MIN_API_LEVEL = 2  # kernel and library support the TSYNC flag

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_FLTATR_ACT_BADARCH, _SCMP_FLTATR_CTL_NNP, _SCMP_FLTATR_CTL_TSYNC = 2, 3, 4
_SCMP_CMP_NE, _SCMP_CMP_MASKED_EQ = 1, 7


def _errno_action(code: int) -> int:
    """SCMP_ACT_ERRNO(code): the call returns -1 with errno set to `code`."""
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp: one comparison of a syscall argument (MASKED_EQ: (arg & a) == b)."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


# Per syscall, the alternative conditions (each one rule; the rules are ORed) under which it is
# denied; a syscall not named here is denied whatever its arguments.
_CONDITIONS: dict[str, list[_ArgCmp]] = {
    "clone": [_ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag) for flag in NAMESPACE_CLONE_FLAGS.values()],
    "personality": [_ArgCmp(0, _SCMP_CMP_NE, 0, 0)],
}
_ERRNO = {"clone3": errno.ENOSYS}  # every other denied call: EPERM


def _load(library_name: str) -> ctypes.CDLL:
    """Load libseccomp and declare the signatures used here.

    OSError when it cannot be loaded; AttributeError when it is older than 2.4 (no seccomp_api_get),
    the first version with SCMP_ACT_KILL_PROCESS, the bad-arch action used here.
    """
    lib = ctypes.CDLL(library_name)
    lib.seccomp_api_get.restype = ctypes.c_uint
    lib.seccomp_api_get.argtypes = []
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def available(library_name: str = LIBRARY_NAME) -> str | None:
    """None when `install_denylist()` can install its filter here, else one line: why not, and how to fix it.

    `library_name` is the shared library to load (tests name a missing one to see the refusal).
    """
    if sys.platform != "linux":
        return f"seccomp filters are Linux-only (this is {sys.platform})"
    try:
        lib = _load(library_name)
    except (OSError, AttributeError) as exc:
        return f"{library_name} not found or older than 2.4 ({exc}): apt-get install libseccomp2"
    api = lib.seccomp_api_get()
    if api < _MIN_API_LEVEL:
        return (f"the kernel does not support seccomp filters on all threads (libseccomp API level {api}, "
                f"needs {_MIN_API_LEVEL}): run on Linux 3.17 or newer with CONFIG_SECCOMP_FILTER")
    return None


def _check(rc: int, what: str) -> None:
    """Raise OSError naming `what` when a libseccomp call returned a negative errno."""
    if rc < 0:
        raise OSError(-rc, f"seccomp: {what} failed: {os.strerror(-rc)}")


def install_denylist(library_name: str = LIBRARY_NAME) -> list[str]:
    """Install the denylist filter on every thread of the calling process; return the denied syscall names.

    The names are those of `DENYLIST` that exist on this architecture (libseccomp resolves them).
    The filter cannot be removed, and every child inherits it. Sets no_new_privs. Raises OSError with a
    one-line reason when the filter cannot be installed (the reason of `available()` among them).
    """
    reason = available(library_name)
    if reason is not None:
        raise OSError(errno.ENOSYS, reason)
    lib = _load(library_name)
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_ACT_BADARCH, _SCMP_ACT_KILL_PROCESS),
               "setting the bad-arch action to KILL_PROCESS")
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 1), "setting no_new_privs")
        _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_TSYNC, 1), "asking for all threads (TSYNC)")
        denied = []
        for _group, names in DENYLIST:
            for name in names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:  # unknown to libseccomp, or not a syscall of this architecture
                    continue
                action = _errno_action(_ERRNO.get(name, errno.EPERM))
                conditions = _CONDITIONS.get(name)
                if conditions is None:
                    _check(lib.seccomp_rule_add_array(ctx, action, number, 0, None), f"a rule for {name}")
                else:
                    for condition in conditions:
                        _check(lib.seccomp_rule_add_array(ctx, action, number, 1, ctypes.byref(condition)),
                               f"a rule for {name}")
                denied.append(name)
        _check(lib.seccomp_load(ctx), "loading the filter (seccomp_load)")
    finally:
        lib.seccomp_release(ctx)
    return denied
