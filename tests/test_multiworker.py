"""Two worker processes on 127.0.0.1 train together with `MultiWorkerMirroredStrategy`, are killed, and resume.

The pair runs the real CLI (`tfdiffusion train --strategy multiworker`, one
CPU device each: 2 replicas, global batch 8) with `TF_CONFIG`. The non-chief
worker is SIGKILLed once the chief has written a checkpoint; the chief,
left waiting in a collective, is killed too. The same command started again
on both resumes from the checkpoint, both finish, and only the chief writes
the run's files. The result equals one process training the same run
without interruption: the step counter, learning-rate schedule, EMA, data
position and every random draw continue exactly.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

TOTAL_STEPS = 4
FLAGS = ["--preset", "shapes", "--steps", str(TOTAL_STEPS), "--batch-size", "8", "--image-size", "8",
         "--num-timesteps", "20", "--sample-steps", "2", "--num-samples", "4", "--no-jit-compile",
         "--checkpoint-every", "2"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_pair(run_dir, ports, log_dir, attempt):
    workers = [f"127.0.0.1:{port}" for port in ports]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": index}}))
        log = open(log_dir / f"worker{index}-{attempt}.log", "w")
        processes.append(subprocess.Popen(
            [sys.executable, "-u", "-m", "tfdiffusion.cli", "train", *FLAGS, "--strategy", "multiworker",
             "--output-dir", str(run_dir)], env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def _log(log_dir, index, attempt):
    return (log_dir / f"worker{index}-{attempt}.log").read_text()[-3000:]


def _weights(path):
    import tfdiffusion

    model = tfdiffusion.load_model(path, compile=True)
    return model.network.get_weights() + model.ema_network.get_weights(), int(model.optimizer.iterations)


def test_two_workers_train_are_killed_and_resume_like_one_uninterrupted_process(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    checkpoint = run / "checkpoints" / "ckpt.keras"

    # 1. Both workers start; the non-chief is killed once the chief's first checkpoint exists.
    pair = _start_pair(run, _free_ports(2), logs, 1)
    deadline = time.time() + 900
    while not checkpoint.exists() and time.time() < deadline and all(p.poll() is None for p in pair):
        time.sleep(0.05)
    assert checkpoint.exists(), _log(logs, 0, 1)
    pair[1].send_signal(signal.SIGKILL)
    pair[1].wait()
    try:  # the chief waits in a collective for its dead peer (or fails); either way it is gone next
        pair[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        pair[0].send_signal(signal.SIGKILL)
        pair[0].wait()
    assert not (run / "train_summary.json").exists()
    assert len(json.loads((run / "checkpoints" / "run.json").read_text())) > 0

    # 2. The same command on both: they resume from the checkpoint and finish.
    pair = _start_pair(run, _free_ports(2), logs, 2)
    for index, process in enumerate(pair):
        assert process.wait(timeout=900) == 0, _log(logs, index, 2)
    assert "Resuming the interrupted run" in _log(logs, 0, 2)
    assert "not the cluster's chief" in _log(logs, 1, 2)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == TOTAL_STEPS
    assert summary["resumed_from_step"] == 2
    assert "2 replica(s)" in summary["strategy"]
    assert (run / "samples.png").exists()
    leftovers = [name for name in os.listdir(run) if name.startswith(".")]
    assert not leftovers

    # 3. One process, one device, the same run uninterrupted: the same weights, EMA and step.
    single = subprocess.run([sys.executable, "-m", "tfdiffusion.cli", "train", *FLAGS, "--strategy", "cpu",
                             "--output-dir", str(tmp_path / "single")], capture_output=True, text=True,
                            timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    resumed, resumed_step = _weights(run / "model.keras")
    straight, straight_step = _weights(tmp_path / "single" / "model.keras")
    assert resumed_step == straight_step == TOTAL_STEPS
    for a, b in zip(resumed, straight):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
