"""Paths compared as the file system sees them: real paths, outputs kept apart from inputs, writable folders.

Every command and function that reads some paths and writes others checks
the pairs here, so that no spelling of a path (relative or absolute, with
`..`, through a symbolic link, a bind mount, or a link inside an image
folder) lets an output land inside an input or an input inside an output.
Paths with a URL scheme (`gs://...`) are compared as written.
"""

import os
import tempfile
from typing import Iterable, List, Optional

__all__ = ["check_apart", "check_not_inside", "check_writable", "is_inside", "is_local", "real_path",
           "reachable_folders"]


def is_local(path: str) -> bool:
    """True for a file-system path, False for a URL such as `gs://bucket/x`."""
    return "://" not in os.fspath(path)


def real_path(path: str) -> str:
    """`path` absolute, with `..` collapsed and every symbolic link resolved (URLs as given).

    The path need not exist: its existing part is resolved and the rest
    appended, so an output folder not yet made compares correctly.
    """
    path = os.fspath(path)
    # Not `abspath` first: it drops `link/..` as text, where the file system goes up from the link's target.
    return os.path.realpath(path) if is_local(path) else path


def _identity(path: str):
    """(device, inode) of an existing path, None otherwise."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it, under any spelling of either.

    Compares real paths; where `folder` exists, also the (device, inode) of
    every existing ancestor of `path`, which catches a folder reached twice
    through a bind mount.
    """
    path, folder = real_path(path), real_path(folder)
    if not (is_local(path) and is_local(folder)):
        return path.rstrip("/") == folder.rstrip("/") or path.startswith(folder.rstrip("/") + "/")
    if os.path.commonpath([path, folder]) == folder:
        return True
    target = _identity(folder)
    if target is None or not os.path.isdir(folder):
        return False
    ancestor = path
    while True:
        if _identity(ancestor) == target:
            return True
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            return False
        ancestor = parent


def reachable_folders(folder: str) -> List[str]:
    """The real paths of `folder` and of every folder a symbolic link inside it leads to.

    An image-folder data set is read through the links in it (`tf.io.gfile.walk`
    follows them), so an output is inside the data if it is inside any of
    these. Hidden folders are skipped, as the image-folder loader skips them;
    a link loop is followed once.
    """
    start = real_path(folder)
    if not is_local(start) or not os.path.isdir(start):
        return [start]
    found, pending = [start], [start]
    while pending:
        for root, subfolders, _ in os.walk(pending.pop()):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in subfolders:
                link = os.path.join(root, name)
                if os.path.islink(link):
                    target = real_path(link)
                    if os.path.isdir(target) and not any(is_inside(target, seen) for seen in found):
                        found.append(target)
                        pending.append(target)
    return found


def _spelled(path: str) -> str:
    shown = os.fspath(path)
    real = real_path(shown)
    return repr(shown) if real in (shown, os.path.abspath(shown)) else f"{shown!r} (that is {real!r})"


def check_not_inside(output: str, output_name: str, inputs: Iterable[str], input_name: str, why: str) -> None:
    """Refuses an `output` that is, or lies inside, one of `inputs` (folders or files), under any spelling.

    Args:
        output: the path written.
        output_name: its argument's name, e.g. "output_dir" (shown as `output_dir`).
        inputs: the paths read (e.g. `reachable_folders(dataset)`); the first
            one is named in the message, as the user gave it.
        input_name: their argument's name.
        why: what would go wrong, e.g. "the run's files would become training images".

    Raises:
        ValueError: naming both arguments and the real paths.
    """
    inputs = [os.fspath(path) for path in inputs]
    for folder in inputs:
        if is_inside(output, folder):
            where = (f"`{input_name}` {_spelled(inputs[0])}" if folder == inputs[0] else
                     f"{folder!r}, where a link inside `{input_name}` {inputs[0]!r} leads")
            raise ValueError(f"`{output_name}` {_spelled(output)} is inside {where}: {why}. "
                             "Choose a path outside it")


def check_apart(output: str, output_name: str, input_path: str, input_name: str, why: str,
                inputs: Optional[Iterable[str]] = None) -> None:
    """Refuses an `output` folder inside `input_path`, or `input_path` inside the output, under any spelling.

    Args:
        output: the folder written.
        output_name: its argument's name.
        input_path: the folder (or file) read, as the user gave it.
        input_name: its argument's name.
        why: what would go wrong.
        inputs: every real folder read for `input_path` (default: itself;
            `reachable_folders(input_path)` for an image folder).

    Raises:
        ValueError: naming both arguments and the real paths.
    """
    check_not_inside(output, output_name, [input_path, *(inputs or ())], input_name, why)
    if is_inside(input_path, output):
        raise ValueError(f"`{input_name}` {_spelled(input_path)} is inside `{output_name}` {_spelled(output)}: "
                         f"{why}. Choose an `{output_name}` that does not hold it")


def check_writable(path: str, name: str) -> None:
    """Refuses, before any work, a `path` (file or folder, existing or to be made) that cannot be written.

    Creates and removes a hidden temporary file in the nearest existing
    folder of `path` (what `os.access` cannot tell for root, for whom
    permission bits do not apply but a read-only or virtual file system
    still refuses), so the answer is the file system's own.

    Raises:
        ValueError: naming `name`, the folder and the reason.
    """
    path = os.fspath(path)
    if not is_local(path):
        return
    folder = real_path(path if os.path.isdir(path) else os.path.dirname(path) or ".")
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write `{name}` {path!r}: {folder!r} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".tfdiffusion-write-test-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"cannot write `{name}` {path!r}: folder {folder!r} does not accept new files "
                         f"({error.strerror or error})") from None
