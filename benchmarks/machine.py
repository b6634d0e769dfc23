"""What a benchmark records about the machine it ran on (no TensorFlow or PyTorch import).

CPU model and the instruction-set flags that decide which kernels run
(AVX2 / AVX-512 / AVX512_BF16 / AMX), core counts, load averages and the
git state of the checkout.
"""

import os
import platform
import resource
import subprocess

__all__ = ["cpu_flags", "cpu_model", "git", "load_average", "machine_summary", "peak_resident_mb",
           "resident_mb"]

# The flags that change which matmul/convolution kernels the frameworks pick.
KERNEL_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def resident_mb():
    """This process's resident set now, in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mb():
    """This process's peak resident set so far, in MB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (or `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags():
    """The sorted subset of `KERNEL_FLAGS` the CPU reports, or None where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()) & set(KERNEL_FLAGS))
    except OSError:
        pass
    return None


def load_average():
    """1/5/15-minute load averages, rounded (None where unavailable)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git(*args):
    """`git *args` in this checkout, stripped stdout (None if git fails)."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine_summary():
    """CPU, cores, platform, Python and the checkout's commit."""
    flags = cpu_flags() or []
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": flags,
        "cpu_kind": ("AMX" if "amx_bf16" in flags else "AVX-512 with BF16" if "avx512_bf16" in flags
                     else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }
