"""callbacks.SampleGrid: a fixed-seed grid and FID/KID every N epochs, to PNG, the logs and TensorBoard."""

import glob
import os

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from PIL import Image

import tfdiffusion as tfdiff
from tfdiffusion import callbacks, features, images


def _fid_numpy(a, b):
    """Fréchet distance of two feature sets, float64 (Heusel et al. 2017, Eq. 6)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def test_sample_grid_every_epoch_with_fid_to_png_logs_and_tensorboard(tmp_path):
    keras.utils.set_random_seed(0)
    unet = tfdiff.UNet(image_size=16, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(), dropout=0.0, num_classes=8, num_groups=4)
    model = tfdiff.DiffusionModel(unet, tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", 20)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    real, labels = tfdiff.make_shapes(24, 16, seed=1)
    train = tf.data.Dataset.from_tensor_slices(((real / 127.5 - 1).astype(np.float32), labels)).batch(8)
    extractor = features.shapes_features()
    grid_labels = np.arange(8, dtype=np.int32) % 8
    watcher = callbacks.SampleGrid(tmp_path / "progress", num_images=8, every_epochs=2, sampler="ddim",
                                   num_steps=2, guidance_scale=2.0, seed=5, labels=grid_labels, columns=4,
                                   log_dir=str(tmp_path / "logs"), real_images=real[:16],
                                   feature_extractor=extractor, metric_images=8, metric_names=("fid",),
                                   skip_from_step=12)
    at_step_8 = {}
    snapshot = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: at_step_8.update(
        weights=model.ema_network.get_weights()) if epoch == 3 else None)
    history = model.fit(train.repeat(), steps_per_epoch=2, epochs=6, verbose=0, callbacks=[watcher, snapshot])

    # Epochs 2 and 4 drew (steps 4 and 8); epoch 6 (step 12, the run's last) is skipped.
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "progress" / "*.png")))
    assert names == ["samples_step0000004.png", "samples_step0000008.png"]
    # The step-8 grid is what generate draws from the step-8 EMA weights with the same seed and settings.
    model.ema_network.set_weights(at_step_8["weights"])
    expected = model.generate(8, sampler="ddim", num_steps=2, guidance_scale=2.0, seed=5, labels=grid_labels)
    with Image.open(tmp_path / "progress" / "samples_step0000008.png") as png:
        np.testing.assert_array_equal(np.asarray(png), images.make_grid(expected, 4))
    # FID in the epoch logs, equal to the formula on the same features.
    fids = history.history["fid"]
    assert len(fids) == 2
    reference = _fid_numpy(extractor(real[:16]), extractor(expected))
    assert fids[-1] == pytest.approx(reference, rel=1e-3)
    # TensorBoard: the grid as an image summary and the FID as a scalar, at the optimizer steps.
    found = {}
    for path in glob.glob(str(tmp_path / "logs" / "samples" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    assert found == {"samples": [4, 8], "fid": [4, 8]}


def test_sample_grid_refuses_half_a_metric_setup(tmp_path):
    with pytest.raises(ValueError, match="real_images.*feature_extractor"):
        callbacks.SampleGrid(tmp_path, real_images=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="metric_names"):
        callbacks.SampleGrid(tmp_path, metric_names=("is",))


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[0, 9]), r"`labels` must be in \[0, 3\)"),
    (dict(num_steps=50), r"`num_steps` must be an integer in \[1, 10\]"),
    (dict(real_images=np.zeros((4, 16, 16, 3), np.uint8), feature_extractor=lambda x: x, metric_images=2),
     r"`real_images` must be at least 2 images of the model's shape \[M, 8, 8, 3\]"),
])
def test_sample_grid_arguments_the_model_refuses_stop_fit_before_the_first_step(tmp_path, kwargs, message):
    # Labels, steps and the real images' shape depend on the model: checked when training begins, not after
    # an epoch.
    unet = tfdiff.UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(), dropout=0.0, num_classes=3, num_groups=4)
    model = tfdiff.DiffusionModel(unet, tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("cosine", 10)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    train = tf.data.Dataset.from_tensor_slices((np.zeros((2, 8, 8, 3), np.float32), np.zeros(2, np.int32))).batch(2)
    watcher = callbacks.SampleGrid(tmp_path / "grid", num_images=2, **{"num_steps": 2, **kwargs})
    with pytest.raises(ValueError, match=message):
        model.fit(train, verbose=0, callbacks=[watcher])
    assert int(model.optimizer.iterations.numpy()) == 0 and not os.path.exists(tmp_path / "grid")


def test_cli_train_draws_a_progress_grid_every_epoch_but_the_last(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "images" / "only"
    folder.mkdir(parents=True)
    pictures, _ = tfdiff.make_shapes(8, 8, seed=3)
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{i}.png")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "tfdiffusion.cli", "train", "--preset", "shapes", "--dataset",
         str(tmp_path / "images"), "--epochs", "3", "--batch-size", "4", "--image-size", "8",
         "--num-timesteps", "20", "--sample-steps", "2", "--num-samples", "4", "--no-jit-compile",
         "--output-dir", str(run)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # 3 epochs of 2 steps: grids after steps 2 and 4; the last epoch's grid is samples.png.
    assert sorted(os.listdir(run / "progress")) == ["samples_step0000002.png", "samples_step0000004.png"]
    with Image.open(run / "progress" / "samples_step0000004.png") as png:
        assert png.size == (16 * 9 + 1, 9 + 1)  # one class: one row of 16 8x8 images, 1-pixel padding
