"""Export atomicity (SIGKILL mid-export, refusing and replacing versions) and an unconditional model's export."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import export_helpers as helpers
from tfdiffusion import export

# A child process that exports an unconditional tiny model as version 1 (whole),
# saves generate's reference images, then starts version 2 and announces when
# that SavedModel is on disk but not yet moved into place; the test kills it there.
KILLED_EXPORT = r"""
import os, sys, time
import numpy as np
import tensorflow as tf
from tests import export_helpers as helpers
from tfdiffusion import export

model_dir, signal_path, images_path = sys.argv[1:4]
model = helpers.tiny_model(num_classes=None, seed=3)
export.export_saved_model(model, model_dir, samplers=("ddpm",), default_sampler="ddpm",
                          max_images=helpers.MAX_IMAGES)
np.save(images_path, model.generate(3, sampler="ddpm", num_steps=4, seed=11, jit_compile=False))
real_save = tf.saved_model.save

def save_then_stall(*args, **kwargs):
    real_save(*args, **kwargs)
    open(signal_path, "w").close()
    time.sleep(600)

tf.saved_model.save = save_then_stall
export.export_saved_model(model, model_dir, samplers=("ddpm",), default_sampler="ddpm", max_images=2)
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """`(model_dir, reference images)` after the child was killed while writing version 2."""
    folder = tmp_path_factory.mktemp("killed")
    model_dir, signal_path = folder / "base" / "plain", folder / "saved.signal"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [helpers.REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    child = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, model_dir, signal_path, folder / "images.npy"],
                             cwd=helpers.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not os.path.exists(signal_path) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate()
    assert os.path.exists(signal_path), stderr[-3000:]
    assert child.returncode == -signal.SIGKILL
    return str(model_dir), np.load(folder / "images.npy")


def test_sigkill_leaves_no_partial_version(killed):
    model_dir, _ = killed
    entries = sorted(os.listdir(model_dir))
    assert export.existing_versions(model_dir) == [1]
    leftovers = [name for name in entries if name != "1"]
    # The killed version's SavedModel was complete in its hidden folder, never under a version name.
    assert len(leftovers) == 1 and leftovers[0].startswith(".2.") and leftovers[0].endswith(".tmp")
    assert os.path.isfile(os.path.join(model_dir, leftovers[0], "saved_model.pb"))
    assert export.resolve_version_dir(model_dir) == os.path.join(model_dir, "1")


def test_unconditional_export_matches_generate_and_caps_num_images(killed):
    model_dir, reference = killed
    loaded = tf.saved_model.load(os.path.join(model_dir, "1"))
    assert sorted(loaded.signatures) == ["denoise", "generate", "generate_ddpm", "serving_default"]
    generate = loaded.signatures["generate"]
    images = generate(seed=tf.constant(11, tf.int64), num_steps=tf.constant(4), num_images=tf.constant(3))["images"]
    helpers.assert_same_images(images.numpy(), reference)
    # 2**31 - 1 images of 8x8x3 floats would be 1.6 TB: refused before any allocation.
    for count in (2**31 - 1, helpers.MAX_IMAGES + 1, 0, -5):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`num_images` must be between 1 and max_images=4"):
            generate(seed=tf.constant(0, tf.int64), num_steps=tf.constant(1), num_images=tf.constant(count))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return helpers.shared_export(tmp_path_factory)


def test_overwrite_replaces_a_version(killed, exported, tmp_path):
    """The unconditional version 1 replaced by the shared conditional model's DDIM-only export."""
    model_dir, _ = killed
    model, _, _ = exported
    copy = tmp_path / "plain"
    shutil.copytree(os.path.join(model_dir, "1"), copy / "1")
    (copy / "1" / "marker").write_text("old")
    with pytest.raises(FileExistsError):
        export.export_saved_model(model, copy, version=1, samplers=("ddim",))
    written = export.export_saved_model(model, copy / "1", samplers=("ddim",), overwrite=True,
                                        warmup_requests=False)
    assert written == str(copy / "1") and sorted(os.listdir(copy)) == ["1"]
    assert not (copy / "1" / "marker").exists()
    assert sorted(tf.saved_model.load(written).signatures) == ["denoise", "generate", "generate_ddim",
                                                               "serving_default"]
    # The next version without a number is one above the highest.
    assert export.existing_versions(copy) == [1]
    (copy / "7").mkdir()
    (copy / "notes").mkdir()
    assert export.existing_versions(copy) == [1, 7]
