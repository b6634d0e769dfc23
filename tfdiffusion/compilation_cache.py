"""XLA's persistent compilation cache: compiled programs kept on disk across runs.

A `jit_compile=True` training step or sampling loop is compiled by XLA the
first time it runs, which for a full-size UNet takes tens of seconds on a
CPU. TensorFlow can keep the compiled programs in a folder
(`--tf_xla_persistent_cache_directory` in `TF_XLA_FLAGS`) and load them
when the same program (same graph, shapes, dtypes and device) is compiled
again, in this or a later process. `enable_compilation_cache` turns it on;
the `tfdiffusion` command does so by default.

TensorFlow reads `TF_XLA_FLAGS` once, at the first XLA compilation of the
process: enable the cache before the first compiled `fit`, `evaluate` or
`generate` call (importing TensorFlow or tfdiffusion does not compile).
Entries are never evicted (tens of MB per full-size model and shape);
delete the folder to clear it. TensorFlow logs one harmless
"Error parsing text-format tensorflow.XlaSerializedCacheEntry" line per
entry it loads: it tries the text format before the binary one.
"""

import os
import re
from typing import Optional

from tfdiffusion import paths

__all__ = ["cache_directory_in_use", "default_cache_directory", "enable_compilation_cache",
           "lowered_steps_directory"]

_FLAG = "--tf_xla_persistent_cache_directory"
# Set by `enable_compilation_cache(lowered_steps=True)`; inherited by the processes this one starts.
_LOWERED_STEPS_ENV = "TFDIFFUSION_LOWERED_STEPS"
_LOWERED_STEPS_FOLDER = "lowered-train-steps"
_FLAG_PATTERN = re.compile(re.escape(_FLAG) + r"=(\S+)")


def default_cache_directory() -> str:
    """`$TFDIFFUSION_CACHE_DIR`, else `$XDG_CACHE_HOME/tfdiffusion/xla`, else `~/.cache/tfdiffusion/xla`."""
    explicit = os.environ.get("TFDIFFUSION_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfdiffusion", "xla")


def cache_directory_in_use() -> Optional[str]:
    """The cache folder `TF_XLA_FLAGS` names for this process, or None."""
    match = _FLAG_PATTERN.search(os.environ.get("TF_XLA_FLAGS", ""))
    return match.group(1) if match else None


def lowered_steps_directory() -> Optional[str]:
    """The folder of lowered training steps (`lowered_steps`), or None when they are off."""
    directory = cache_directory_in_use()
    if directory is None or os.environ.get(_LOWERED_STEPS_ENV) != "1":
        return None
    return os.path.join(directory, _LOWERED_STEPS_FOLDER)


def enable_compilation_cache(directory: Optional[str] = None, lowered_steps: bool = False) -> str:
    """Keeps XLA's compiled programs in `directory` for later runs of the same computation.

    Call it before the process compiles anything with XLA (TensorFlow reads
    its XLA flags once). A cache folder already named in `TF_XLA_FLAGS` is
    kept when `directory` is None.

    Args:
        directory: the cache folder (created if missing); None for the one
            already in `TF_XLA_FLAGS`, else `default_cache_directory()`.
        lowered_steps: also keep each `DiffusionModel`'s lowered XLA training
            step in the folder, so that a later `fit` of the same
            configuration skips tracing and lowering it (see
            `tfdiffusion.lowered_steps`). The `tfdiffusion` command turns it
            on; False leaves the current setting.

    Returns:
        The absolute path of the cache folder.

    Raises:
        TypeError: `directory` is not a string or path.
        ValueError: `directory` is empty, is a file, cannot be written, or
            `TF_XLA_FLAGS` already names another cache folder.
    """
    if not isinstance(lowered_steps, bool):
        raise TypeError(f"`lowered_steps` must be True or False. Received: {lowered_steps!r}")
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"`directory` must be a folder path (str or os.PathLike) or None. "
                        f"Received: {directory!r} of type {type(directory).__name__}")
    in_use = cache_directory_in_use()
    if directory is None:
        directory = in_use or default_cache_directory()
    directory = os.fspath(directory)
    if not directory.strip():
        raise ValueError("`directory` must name a folder. Received an empty path")
    path = os.path.abspath(os.path.expanduser(directory))
    if any(c.isspace() for c in path):
        raise ValueError(f"`directory` must not contain whitespace (TF_XLA_FLAGS is split on it). "
                         f"Received: {path!r}")
    if in_use is not None and os.path.abspath(in_use) != path:
        raise ValueError(f"TF_XLA_FLAGS already sets the XLA cache folder to {in_use!r}; cannot use "
                         f"{path!r} as well (remove {_FLAG} from TF_XLA_FLAGS or pass that folder)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"the compilation cache `directory` {path!r} is a file; expected a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the compilation cache folder {path!r}: "
                         f"{error.strerror or error}") from None
    paths.check_writable(path, "directory")  # a probe file: `os.access` says yes to root everywhere
    if in_use is None:
        flags = os.environ.get("TF_XLA_FLAGS", "").strip()
        os.environ["TF_XLA_FLAGS"] = f"{flags} {_FLAG}={path}".strip()
    if lowered_steps:
        os.environ[_LOWERED_STEPS_ENV] = "1"
    return path
