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
from tfdiffusion import cli
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


def _stalled_export(code, model_dir, signal_path, *args):
    """A child process running `code` with the arguments `model_dir signal_path *args`, once it has created
    `signal_path`: its export's SavedModel is written, not yet moved into place."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [helpers.REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, (model_dir, signal_path) + args)],
                             cwd=helpers.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not os.path.exists(signal_path) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not os.path.exists(signal_path):
        child.kill()
        assert False, child.communicate()[1][-3000:]
    return child


def _kill(child):
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """`(model_dir, reference images)` after the child was killed while writing version 2."""
    folder = tmp_path_factory.mktemp("killed")
    model_dir, signal_path = folder / "base" / "plain", folder / "saved.signal"
    _kill(_stalled_export(KILLED_EXPORT, model_dir, signal_path, folder / "images.npy"))
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


# ---------------------------------------------------------------- issue 23
# A later export removes the working folders that killed exports left, never a running export's.
STALLED_EXPORT = r"""
import sys, time
import tensorflow as tf
from tests import export_helpers as helpers
from tfdiffusion import export

model_dir, signal_path = sys.argv[1:3]
real_save = tf.saved_model.save

def save_then_stall(*args, **kwargs):
    real_save(*args, **kwargs)
    open(signal_path, "w").close()
    time.sleep(600)

tf.saved_model.save = save_then_stall
export.export_saved_model(helpers.tiny_model(num_classes=None, seed=3), model_dir, samplers=("ddpm",),
                          default_sampler="ddpm", max_images=2, warmup_requests=False)
"""


def _hidden(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def test_a_later_export_removes_what_a_killed_export_left(killed, exported, tmp_path):
    model_dir, _ = killed
    copy = tmp_path / "plain"
    shutil.copytree(model_dir, copy)  # with the killed export's hidden .2.*.tmp (6 MB of SavedModel)
    assert len(_hidden(copy)) == 1
    model, _, _ = exported
    export.export_saved_model(model, copy, samplers=("ddim",), warmup_requests=False)
    assert sorted(os.listdir(copy)) == ["1", "2"]


def test_a_running_exports_folder_is_kept_and_removed_once_it_died(exported, tmp_path):
    model_dir = tmp_path / "live"
    child = _stalled_export(STALLED_EXPORT, model_dir, tmp_path / "saved.signal")
    try:
        working = _hidden(model_dir)
        assert len(working) == 1 and working[0].startswith(".1.") and working[0].endswith(".tmp")
        model, _, _ = exported
        export.export_saved_model(model, model_dir, version=5, samplers=("ddim",), warmup_requests=False)
        assert export.remove_stale_working_folders(str(model_dir)) == []
        assert _hidden(model_dir) == working  # still being written by the other process: kept
        assert os.path.isfile(model_dir / working[0] / "saved_model.pb")
    finally:
        _kill(child)
    # Dead now: the command line's export removes it.
    keras_file = tmp_path / "tiny.keras"
    model.save(keras_file)
    assert cli.main(["export", "--model", str(keras_file), "--output", str(model_dir), "--version", "6",
                     "--samplers", "ddim"]) == 0
    assert sorted(os.listdir(model_dir)) == ["5", "6"]


def test_only_an_exports_own_working_folders_are_removed(tmp_path):
    """As a killed export leaves them (a .tmp being written, an .old being replaced), and look-alikes that
    are not an export's, which stay."""
    for name in (".3.k2j3h4g5.tmp/variables", ".1.abcd_123.old/previous", ".notes", ".4.short.tmp",
                 "3", ".2.abcdefgh.tmp.keep"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / ".3.k2j3h4g5.tmp" / "saved_model.pb").write_bytes(b"half")
    (tmp_path / ".5.abcdefgh.tmp").write_text("a file, not a folder")
    (tmp_path / ".6.abcdefgh.tmp").symlink_to(tmp_path / "3")
    assert export.remove_stale_working_folders(str(tmp_path)) == [".1.abcd_123.old", ".3.k2j3h4g5.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".2.abcdefgh.tmp.keep", ".4.short.tmp", ".5.abcdefgh.tmp",
                                            ".6.abcdefgh.tmp", ".notes", "3"]
    assert export.remove_stale_working_folders(str(tmp_path / "missing")) == []
