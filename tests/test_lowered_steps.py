"""Lowered training steps: a second process trains from the saved StableHLO step, exactly as the traced step does."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tfdiffusion import lowered_steps
from tfdiffusion import presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                 dropout=0.0, num_groups=4, use_scale_shift_norm=True)

# Trains a tiny model 3 steps with lowered steps on, then (lowered steps off) the same model from the same
# seed with the traced XLA step, in the same process; prints what both did.
PROGRAM = r"""
import json, os, sys
import numpy as np
import tfdiffusion
tfdiffusion.enable_compilation_cache(sys.argv[1], lowered_steps=True)
import keras
import tensorflow as tf
from tfdiffusion import presets

unet = json.loads(sys.argv[2])

def train(initial=None):
    model = presets.build_model("shapes-hybrid", num_classes=3, image_size=8, num_timesteps=20, unet=unet, seed=0)
    if initial is not None:  # the same starting weights (a second model draws other initial values)
        model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    images = tf.random.stateless_uniform((4, 8, 8, 3), seed=[1, 2], minval=-1.0, maxval=1.0)
    labels = tf.constant([0, 1, 2, 0])
    history = model.fit(tf.data.Dataset.from_tensors((images, labels)).repeat(), steps_per_epoch=3, epochs=1,
                        verbose=0)
    return model, {key: [float(v) for v in values] for key, values in history.history.items()}

keras.utils.set_random_seed(0)  # the same initial weights in both processes
initial = presets.build_model("shapes-hybrid", num_classes=3, image_size=8, num_timesteps=20, unet=unet,
                              seed=0).get_weights()
lowered, lowered_logs = train(initial)
step = lowered.lowered_train_step
state = [np.asarray(v) for v in lowered.weights + lowered.optimizer.variables + lowered.metrics_variables]
report = dict(loaded=len(step.loaded), saved=len(step.saved), lowered=lowered_logs,
              iterations=int(lowered.optimizer.iterations),
              ema_differs_from_network=max(float(np.max(np.abs(a - b))) for a, b in zip(
                  lowered.ema_network.get_weights(), lowered.network.get_weights())))
if sys.argv[3] == "compare":
    os.environ["TFDIFFUSION_LOWERED_STEPS"] = "0"
    traced, report["traced"] = train(initial)
    assert getattr(traced, "lowered_train_step", None) is None
    traced_state = [np.asarray(v) for v in traced.weights + traced.optimizer.variables + traced.metrics_variables]
    np.savez(sys.argv[4], *traced_state)
else:
    with np.load(sys.argv[4]) as saved:
        traced_state = [saved[f"arr_{i}"] for i in range(len(saved.files))]
report["difference"] = max(float(np.max(np.abs(a - b))) for a, b in zip(state, traced_state))
print(json.dumps(report))
"""


def _run(folder, mode, state):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "TFDIFFUSION_LOWERED_STEPS")}
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(folder), json.dumps(TINY_UNET), mode, str(state)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_trains_from_the_saved_step_like_the_traced_step(tmp_path):
    folder, traced_state = tmp_path / "cache", tmp_path / "traced.npz"
    # The first process also trains the same model with the traced step and keeps its final state.
    first = _run(folder, "compare", traced_state)
    assert (first["saved"], first["loaded"]) == (1, 0)
    entries = os.listdir(folder / "lowered-train-steps")
    assert len(entries) == 1 and entries[0].endswith(".npz")
    second = _run(folder, "load", traced_state)
    assert (second["saved"], second["loaded"]) == (0, 1)  # nothing traced or lowered for the step
    for run in (first, second):
        # The hybrid loss (its variational-bound term goes through erf) and every update: the same numbers.
        assert run["iterations"] == 3
        assert run["ema_differs_from_network"] > 0
        for name, values in first["traced"].items():
            assert run["lowered"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
        assert run["difference"] < 1e-5  # weights, EMA, optimizer state and metric totals after 3 SGD steps


def _tiny_compiled(**kwargs):
    model = presets.build_model("shapes", num_classes=3, image_size=8, num_timesteps=20, unet=TINY_UNET,
                                seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    model.optimizer.build(model.network.trainable_variables)
    return model


def test_entry_key_follows_what_the_step_depends_on():
    import tensorflow as tf

    specs = [tf.TensorSpec([4, 8, 8, 3], tf.float32), tf.TensorSpec([4], tf.int32)]
    model = _tiny_compiled()
    key = lowered_steps._entry_key(model, specs)
    assert lowered_steps._entry_key(model, specs) == key  # (the same configuration in another process:
    # the first test's second process finds the entry its first one saved)
    assert lowered_steps._entry_key(model, [tf.TensorSpec([2, 8, 8, 3], tf.float32), specs[1]]) != key
    assert lowered_steps._entry_key(_tiny_compiled(ema_decay=0.5), specs) != key
    model.label_dropout = 0.3  # an attribute changed after construction
    assert lowered_steps._entry_key(model, specs) != key


def test_only_tfdiffusion_and_keras_code_is_lowered():
    model = _tiny_compiled()
    assert lowered_steps.ineligibility(model) is None

    class Custom(keras.optimizers.SGD):
        pass

    model.compile(optimizer=Custom(0.05), jit_compile=True)
    assert "optimizer" in lowered_steps.ineligibility(model)
    model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    assert "not compiled with XLA" in lowered_steps.ineligibility(model)


def test_an_unreadable_entry_is_made_anew(monkeypatch):
    import numpy as np
    import tensorflow as tf

    monkeypatch.setenv("TFDIFFUSION_LOWERED_STEPS", "1")  # the session's XLA cache folder holds the entries
    model = _tiny_compiled()
    step = model._lowered_train_step()
    spec = (tf.TensorSpec([4, 8, 8, 3], tf.float32), tf.TensorSpec([4], tf.int32))
    key = lowered_steps._entry_key(model, list(spec))
    path = os.path.join(step.folder, key + ".npz")
    os.makedirs(step.folder, exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"half an entry")
    step.prepare(spec)
    assert step.saved == [key] and step.loaded == []
    from tensorflow.core.framework import function_pb2

    with np.load(path) as saved:  # replaced by a whole entry: its function calls the StableHLO module
        function = function_pb2.FunctionDef.FromString(saved["function"].tobytes())
        assert json.loads(saved["entry"].tobytes().decode())["outputs"]
    modules = [node.attr["module"].s for node in function.node_def if node.op == "XlaCallModule"]
    assert len(modules) == 1 and b"stablehlo" in modules[0]
    assert function.signature.name.endswith(key)  # the same name in every run: XLA's cache finds the program
