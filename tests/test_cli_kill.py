"""A training run killed with SIGKILL at several points, and resumed: no half-written file survives.

One run of 12 steps (checkpoints every 4) is killed three times, at moments
drawn with a fixed seed inside three phases: before the first checkpoint,
while a checkpoint is being written, and while the sample grid is being
drawn. After each kill the folder holds complete files only (plus at most a
hidden temporary file of the write in progress), and the next `--resume`
removes such leftovers, continues from the last checkpoint and finally
finishes the run with the right step count.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

TOTAL_STEPS = 12
FLAGS = ["--preset", "shapes", "--steps", str(TOTAL_STEPS), "--batch-size", "8", "--image-size", "8",
         "--num-timesteps", "20", "--sample-steps", "2", "--num-samples", "4", "--no-jit-compile",
         "--checkpoint-every", "4"]


def _start(run_dir):
    """The run's command, the same every time (a killed run continues by itself)."""
    argv = [sys.executable, "-u", "-m", "tfdiffusion.cli", "train", *FLAGS, "--output-dir", str(run_dir)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def _temp_files(run_dir):
    return glob.glob(os.path.join(run_dir, "**", ".*.tmp*"), recursive=True)


def _kill_when(process, ready, timeout=600):
    """SIGKILLs `process` as soon as `ready()` holds (polled every 2 ms); returns False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.kill()
    raise AssertionError("the run neither reached the kill point nor ended")


def _complete_files_only(run_dir):
    """Every non-hidden file is complete: zips open, JSON parses, PNGs decode."""
    for path in glob.glob(os.path.join(run_dir, "**", "*"), recursive=True):
        if os.path.isdir(path) or os.path.basename(path).startswith(".") or "logs" in path.split(os.sep):
            continue
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                assert archive.testzip() is None, path
        elif path.endswith(".json"):
            with open(path) as file:
                json.load(file)
        elif path.endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                image.load()


def _checkpoint_step(run_dir):
    """The optimizer step saved in checkpoints/ckpt.keras, or None."""
    path = os.path.join(run_dir, "checkpoints", "ckpt.keras")
    if not os.path.exists(path):
        return None
    import tfdiffusion

    return int(tfdiffusion.load_model(path, compile=True).optimizer.iterations)


def test_killed_runs_leave_complete_files_and_the_same_command_finishes_them(tmp_path):
    rng = random.Random(7)
    run = tmp_path / "run"
    checkpoint_dir = run / "checkpoints"

    # 1. Before the first checkpoint: a random moment (0-1 s) after the run's settings are written.
    first = _start(run)
    delay, started = rng.uniform(0.0, 1.0), {}

    def before_first_checkpoint():
        if not started and os.path.exists(checkpoint_dir / "run.json"):
            started["at"] = time.time()
        return bool(started) and time.time() - started["at"] >= delay

    assert _kill_when(first, before_first_checkpoint), first.stdout.read()[-3000:]
    _complete_files_only(run)
    assert not os.path.exists(run / "model.keras") and not os.path.exists(run / "samples.png")

    # 2. While a checkpoint is written: the moment the 1st or 2nd temporary file of this run appears.
    second, wanted, seen = _start(run), rng.randint(1, 2), set()

    def writing_checkpoint():
        current = glob.glob(str(checkpoint_dir / ".ckpt.keras.*.tmp*"))
        seen.update(current)
        return len(seen) >= wanted and bool(current)

    assert _kill_when(second, writing_checkpoint), second.stdout.read()[-3000:]
    _complete_files_only(run)
    step = _checkpoint_step(run)
    assert step is None or step % 4 == 0  # the previous complete checkpoint, or none yet

    # 3. While the sample grid is drawn: model.keras is complete, samples.png not yet written.
    third = _start(run)
    assert _kill_when(third, lambda: os.path.exists(run / "model.keras")), third.stdout.read()[-3000:]
    _complete_files_only(run)
    assert not os.path.exists(run / "train_summary.json")

    # 4. The same command again finishes the run, and no leftovers of the kills remain.
    final = subprocess.run([sys.executable, "-m", "tfdiffusion.cli", "train", *FLAGS, "--output-dir", str(run)],
                           capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Resuming the interrupted run" in final.stdout
    assert not _temp_files(run)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == TOTAL_STEPS
    assert summary["resumed_from_step"] == TOTAL_STEPS  # killed while sampling: training was complete
    _complete_files_only(run)
