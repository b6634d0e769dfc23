"""Test setup: tfdiffusion imported before TensorFlow, two logical CPU devices (for 2-replica strategies), set before TF's runtime starts,
XLA's CPU code generated without LLVM optimisation (faster compiles), and one XLA compilation cache for the whole session (this
process and every process it starts)."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tfdiffusion first: its defaults (oneDNN kernels on x86) apply here and in every subprocess,
# as they do for the `tfdiffusion` command.
from tfdiffusion import compilation_cache  # noqa: E402

import tensorflow as tf  # noqa: E402

# The tests check what compiled programs compute, not how fast they run: LLVM's optimisation
# level 0 for XLA's CPU code (same HLO, same float semantics; no fast-math either way) compiles
# faster (tests/test_model.py 264 -> 235 s, the suite 1822 -> 1678 s on 2 cores). Set before the
# first compilation; subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

# The CLI, worker and export subprocesses compile the same small programs again and again; they
# share this session's cache (inherited through TF_XLA_FLAGS) and never touch the user's own.
if compilation_cache.cache_directory_in_use() is None:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="tfdiffusion-tests-xla-cache-")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
    compilation_cache.enable_compilation_cache(_SESSION_CACHE)


# The README runs the suite in two processes (pytest-xdist, `-n 2 --dist loadfile`): each takes a whole file
# when it is free, so that a file's shared compiled models are built once. Files are handed out in this
# order, the longest first (seconds in a two-process run on 2 cores: 396, 274, 178, 153, 136, 77, 71, 62, 60,
# 59, 50, 39, 30, 26, 26), so that no long file starts last while the other process idles; the rest follow in
# their usual order. Only the schedule depends on it.
_LONGEST_FILES_FIRST = ("test_distribute.py", "test_model.py", "test_multiworker.py", "test_cli.py",
                        "test_export.py", "test_lowered_steps.py", "test_notebook.py", "test_serving.py",
                        "test_sample_grid.py", "test_cli_kill.py", "test_export_cli.py",
                        "convert/test_from_diffusers.py", "test_solvers.py", "test_compilation_cache.py",
                        "nn/test_unet.py")


def pytest_collection_modifyitems(config, items):
    tests = os.path.dirname(os.path.abspath(__file__))
    rank = {name: index for index, name in enumerate(_LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.relpath(str(item.path), tests), len(rank)))


@pytest.fixture(autouse=True)
def _lowered_steps_stay_in_their_test():
    """`tfdiffusion.cli.main` run in-process turns lowered training steps on for the whole process (an
    environment variable, as the command does for itself); each test starts with the session's setting."""
    saved = os.environ.get("TFDIFFUSION_LOWERED_STEPS")
    yield
    if saved is None:
        os.environ.pop("TFDIFFUSION_LOWERED_STEPS", None)
    else:
        os.environ["TFDIFFUSION_LOWERED_STEPS"] = saved
