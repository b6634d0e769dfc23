"""Quiet native logs for the `tfdiffusion` command: TensorFlow's C++ start-up chatter off stderr.

TensorFlow's native libraries log CUDA probing, CPU-feature notes and XLA
notices ("Ignoring Assert operator") straight to file descriptor 2, before
and regardless of `TF_CPP_MIN_LOG_LEVEL` for some of them. The command
routes descriptor 2 through a filter that drops those informational lines
(absl format `I0000 ...` and `W0000 ...`, the CUDA probing errors of a
machine without a GPU) and passes everything else: Python errors and
warnings, fatal native errors. `--debug` turns the filter off. Standard
library only: it runs before TensorFlow is imported.
"""

import atexit
import os
import re
import sys
import threading

__all__ = ["quiet_native_logs", "is_chatter"]

_NATIVE_LINE = re.compile(rb"^[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] ")
_CHATTER = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(rb"^E\d{4} [\d:. ]+\d+ cuda_(platform|executor|diagnostics)\.cc:\d+\] "),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"),
)
_installed = False


def is_chatter(line: bytes) -> bool:
    """True for a native informational log line the command hides."""
    return bool(_NATIVE_LINE.match(line)) or any(pattern.match(line) for pattern in _CHATTER)


def quiet_native_logs() -> None:
    """Routes file descriptor 2 through the chatter filter (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while True:
                chunk = source.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not is_chatter(line))
                if kept:
                    os.write(terminal, kept)
            if pending and not is_chatter(pending):
                os.write(terminal, pending)

    thread = threading.Thread(target=pump, name="tfdiffusion-stderr-filter", daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last writer: the pump sees the end and drains
        thread.join(timeout=5)

    atexit.register(restore)
