"""Writing files atomically: a temporary file beside the target, renamed over it when complete."""

import contextlib
import os
import tempfile
from typing import Iterator

__all__ = ["atomic_output", "default_file_mode"]


def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it to `path` on success.

    The temporary file lives in the same directory (so `os.replace` is an
    atomic rename) and keeps `path`'s extension (Keras insists on `.keras`).
    Its mode is set to what a plain write would give under the user's umask
    (`mkstemp` makes it owner-only). If the body raises, the temporary file
    is removed and `path` is left as it was: no reader ever sees a
    half-written file. A process killed mid-write leaves a hidden
    `.NAME.*.tmp*` file, which `tfdiffusion train` removes at its next start.

    Args:
        path: the final file path.

    Yields:
        The temporary path to write to.
    """
    # The real folder, not `abspath`'s: that drops `link/..` as text where the file system goes up from
    # the link's target, and the rename must stay within the folder `path` names.
    directory, name = os.path.split(os.fspath(path))
    directory = os.path.realpath(directory or ".")
    _, extension = os.path.splitext(name)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{extension}", dir=directory)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
