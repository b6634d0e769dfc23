"""TensorFlow and XLA settings tfdiffusion chooses for CPUs, applied when it is imported.

Both are read by TensorFlow once per process, so they take effect only when set
early: oneDNN's switch when TensorFlow is imported, XLA's flags at the first XLA
compilation. A choice the user made in the environment always stands.
"""

import os
import platform
import sys
from importlib import metadata

__all__ = ["apply_runtime_defaults", "LOW_MEMORY_SCHEDULER_FLAG"]

# XLA's CPU backend orders a program's operations either to let independent
# ones run at the same time (the default) or to keep fewer buffers alive at
# once. On the 2-core AVX2 machine of benchmarks/README.md the second order
# cuts the temporary memory of ddpm-cifar10's training step (batch 8) from
# 574 to 418 MiB and a training process's peak resident memory by 100-220 MB
# (mnist-small, ddpm-cifar10, rgb-64) at the same step and sampling times;
# XLA takes longer to compile a large step with it (2-20 s at ddpm-cifar10).
LOW_MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

# XLA aborts the process on a flag it does not know, so the flag is only set
# for TensorFlow releases whose XLA is known to have it.
_SCHEDULER_FLAG_RELEASES = ((2, 21),)


def _tensorflow_release():
    """(major, minor) of the installed TensorFlow distribution, or None if unknown."""
    for distribution in ("tensorflow", "tensorflow-cpu"):
        try:
            major, minor = metadata.version(distribution).split(".")[:2]
            return int(major), int(minor)
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def apply_runtime_defaults():
    """Turns oneDNN on (x86) and XLA's low-memory CPU scheduler on, unless the environment says otherwise.

    - `TF_ENABLE_ONEDNN_OPTS=1` on x86 when TensorFlow is not imported yet:
      TensorFlow's oneDNN kernels, also used by XLA's CPU backend, are off by
      default on x86 CPUs without AVX-512; on an AVX2 machine they train 8-20%
      faster under XLA (benchmarks/README.md). `TF_ENABLE_ONEDNN_OPTS=0` keeps
      them off.
    - `LOW_MEMORY_SCHEDULER_FLAG` appended to `XLA_FLAGS` (TensorFlow 2.21),
      unless `XLA_FLAGS` already names that flag. It has no effect in a process
      that compiled an XLA program before importing tfdiffusion.
    """
    if "tensorflow" not in sys.modules and platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    flags = os.environ.get("XLA_FLAGS", "")
    flag_name = LOW_MEMORY_SCHEDULER_FLAG.split("=")[0]
    if flag_name not in flags and _tensorflow_release() in _SCHEDULER_FLAG_RELEASES:
        os.environ["XLA_FLAGS"] = f"{flags} {LOW_MEMORY_SCHEDULER_FLAG}".strip()
