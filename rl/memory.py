"""Resident memory of the calling process, for the per-step `perf/*_rss_mb` metrics.

Current RSS comes from /proc/self/statm (Linux); the peak is the kernel's high-water mark
(`getrusage(RUSAGE_SELF).ru_maxrss`, KiB on Linux, bytes on macOS). Where /proc is absent the
current figure is omitted rather than guessed.
"""

from __future__ import annotations

import os
import resource
import sys

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_memory_mb() -> dict[str, float]:
    """{"rss_mb": current resident set, "peak_rss_mb": its high-water mark since the process started} in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": peak / (1 << 20) if sys.platform == "darwin" else peak / 1024}
    try:
        with open("/proc/self/statm") as f:
            out["rss_mb"] = int(f.read().split()[1]) * _PAGE / (1 << 20)
    except OSError:
        pass
    return out
