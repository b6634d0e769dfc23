"""Tests of the `tfdiffusion` command, run as a real subprocess: train, sample, evaluate, user errors."""

import argparse
import glob
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

import tfdiffusion
from tfdiffusion import cli
from tfdiffusion import features
from tfdiffusion import images

# A tiny run: 8x8 images (the shapes UNet halves twice, 8 -> 4 -> 2), T = 20,
# 4 steps of 8 images, 2 DDIM steps for 4 samples; no XLA, whose compile
# takes far longer than these few steps on a CPU.
TRAIN_FLAGS = ["--preset", "shapes", "--steps", "4", "--batch-size", "8", "--image-size", "8",
               "--num-timesteps", "20", "--sample-steps", "2", "--num-samples", "4",
               "--no-jit-compile"]
NUM_CLASSES = len(tfdiffusion.SHAPES_CLASS_NAMES)
# `evaluate --metric fid` on the tiny run: 16 images from DPM-Solver++(2M) in 3 steps against 16 test images.
EVALUATE_FID_FLAGS = ["--num-images", "16", "--sampler", "dpmpp_2m", "--steps", "3", "--seed", "3",
                      "--guidance-scale", "2", "--no-jit-compile"]
BLOCKER_TEXT = "a regular file where --output-dir wants a directory"


def command(*args, program=(sys.executable, "-m", "tfdiffusion.cli")):
    """The argv of a CLI run: `python -m tfdiffusion.cli ARGS` unless `program` is given."""
    return [*program, *map(str, args)]


# The console script setup.cfg declares (pip install -e .), when installed.
INSTALLED = shutil.which("tfdiffusion")


class Runs:
    """CLI runs started together (overlapping their start-up), each awaited when first needed."""

    def __init__(self, **commands):
        self._processes = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True) for name, argv in commands.items()}
        self._results = {}

    def __getitem__(self, name):
        """The run's `CompletedProcess`."""
        if name not in self._results:
            process = self._processes[name]
            stdout, stderr = process.communicate(timeout=600)
            self._results[name] = subprocess.CompletedProcess(process.args, process.returncode,
                                                              stdout, stderr)
        return self._results[name]

    def close(self):
        """Stops runs no test waited for (after a failure)."""
        for name, process in self._processes.items():
            if name not in self._results and process.poll() is None:
                process.kill()
                process.communicate()


def assert_user_error(result, *fragments):
    """Exit code 2, one `tfdiffusion: error: ...` line naming `fragments`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfdiffusion: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def no_temp_files(directory):
    return [p for p in glob.glob(os.path.join(directory, "**", ".*.tmp*"), recursive=True)]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    blocker = root / "blocker"
    blocker.write_text(BLOCKER_TEXT)
    return dict(root=root, run=root / "run", blocker=blocker)


@pytest.fixture(scope="module")
def first_runs(dirs):
    """The training run, and errors that need no model, started at once."""
    root = dirs["root"]
    runs = Runs(
        train=command("train", *TRAIN_FLAGS, "--output-dir", dirs["run"]),
        unknown_preset=command("train", "--preset", "no-such-preset", "--output-dir", root / "p",
                               **({"program": [INSTALLED]} if INSTALLED else {})),
        zero_steps=command("train", "--steps", "0", "--output-dir", root / "z"),
        unwritable=command("train", *TRAIN_FLAGS, "--output-dir", dirs["blocker"] / "run"),
        missing_model=command("sample", "--model", root / "missing" / "model.keras",
                              "--npz", root / "m.npz"),
    )
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def trained(first_runs, dirs):
    result = first_runs["train"]
    assert result.returncode == 0, result.stderr[-3000:]
    return dirs["run"], result


@pytest.fixture(scope="module")
def unconditional_model(dirs):
    path = dirs["root"] / "unconditional.keras"
    model = tfdiffusion.build_model("shapes", num_classes=None, image_size=8, num_timesteps=20)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_runs(trained, dirs):
    """Runs on the trained model, started at once."""
    run, root = trained[0], dirs["root"]
    shutil.copytree(run, root / "resumed")
    shutil.copytree(run, root / "resumed_lr")
    sample = ["sample", "--model", run / "model.keras", "--num-images", 6, "--labels", "1,2,5",
              "--steps", 2, "--seed", 7, "--batch-size", 3, "--no-jit-compile"]
    runs = Runs(
        sample_a=command(*sample, "--npz", root / "a.npz", "--output", root / "a.png"),
        sample_b=command(*sample, "--npz", root / "b.npz"),
        evaluate=command("evaluate", "--model", run / "model.keras", "--dataset", "shapes",
                         "--metric", "bpd", "--bpd-steps", 4, "--batch-size", 8, "--num-batches", 2,
                         "--no-jit-compile"),
        # Settings come from checkpoints/run.json; 4 of 4 steps done: no training.
        resume=command("train", "--output-dir", root / "resumed", "--resume", "--no-jit-compile",
                       "--gradient-checkpointing"),
        # A resume cannot honour another learning rate (its optimizer and schedule are saved).
        resume_lr=command("train", "--output-dir", root / "resumed_lr", "--resume", "--steps", 8,
                          "--learning-rate", "0.5", "--no-jit-compile"),
        bad_labels=command("sample", "--model", run / "model.keras", "--labels", f"0,{NUM_CLASSES}",
                           "--steps", 2, "--npz", root / "bad.npz", "--no-jit-compile"),
        sample_heun=command(*sample, "--sampler", "heun", "--spacing", "karras", "--churn", "1",
                            "--threshold", "0.995", "--npz", root / "heun.npz"),
        eta_misused=command("sample", "--model", run / "model.keras", "--sampler", "dpmpp_2m", "--eta", "0.5",
                            "--npz", root / "eta.npz", "--no-jit-compile"),
        evaluate_fid=command("evaluate", "--model", run / "model.keras", "--dataset", "shapes", "--metric", "fid",
                             *EVALUATE_FID_FLAGS),
        evaluate_kid=command("evaluate", "--model", run / "model.keras", "--dataset", "shapes", "--metric", "kid",
                             "--num-images", 12, "--kid-subset-size", 6, "--steps", 2, "--no-jit-compile"),
    )
    yield runs
    runs.close()


# ------------------------------------------------------------------- train
def test_train_writes_a_loadable_model(trained):
    run, result = trained
    model = keras.models.load_model(run / "model.keras")
    assert isinstance(model, tfdiffusion.DiffusionModel)
    assert model.image_shape == (8, 8, 3)
    assert model.num_classes == NUM_CLASSES
    assert model.diffusion.num_timesteps == 20
    assert int(model.optimizer.iterations) == 4
    assert str(run / "model.keras") in result.stdout


def test_train_writes_the_sample_grid(trained):
    run, _ = trained
    # 4 samples of a conditional model: one per row (classes 0..3), 1 px padding.
    with Image.open(run / "samples.png") as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == (1 * (8 + 1) + 1, 4 * (8 + 1) + 1)


def test_train_writes_checkpoint_and_logs(trained):
    run, result = trained
    assert zipfile.is_zipfile(run / "checkpoints" / "ckpt.keras")
    events = glob.glob(str(run / "logs" / "**" / "events.out.tfevents.*"), recursive=True)
    if importlib.util.find_spec("tensorboard") is None:  # not a dependency of tfdiffusion (yet)
        assert "TensorBoard is not installed" in result.stderr
    else:
        assert events
    assert not no_temp_files(run)


def test_train_writes_the_summary(trained):
    run, _ = trained
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["preset"] == "shapes" and summary["steps"] == 4
    assert summary["image_size"] == 8 and summary["num_timesteps"] == 20
    assert summary["num_classes"] == NUM_CLASSES
    assert summary["class_names"] == list(tfdiffusion.SHAPES_CLASS_NAMES)
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] > 0
    assert summary["wall_time_seconds"] > 0
    assert summary["samples"]["labels"] == [0, 1, 2, 3]
    # The shapes preset's grid sampler is ancestral DDPM, at --sample-steps.
    assert summary["samples"]["sampler"] == "ddpm" and summary["samples"]["steps"] == 2


def test_train_resume_continues_the_run(model_runs, dirs):
    result = model_runs["resume"]
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((dirs["root"] / "resumed" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 4
    assert summary["image_size"] == 8 and summary["num_timesteps"] == 20  # not the preset's 16, 1000
    # A memory setting may change on resume; the run's settings record it.
    settings = json.loads((dirs["root"] / "resumed" / "checkpoints" / "run.json").read_text())
    assert settings["gradient_checkpointing"] is True
    assert not no_temp_files(dirs["root"] / "resumed")


def test_resume_refuses_settings_it_cannot_honour(model_runs, dirs):
    # Bug: --resume --learning-rate X trained on with the old rate while recording X.
    folder = dirs["root"] / "resumed_lr"
    before = {p: (folder / p).read_bytes() for p in ("checkpoints/run.json", "train_summary.json")}
    assert_user_error(model_runs["resume_lr"], "--resume", "learning_rate", "0.5")
    for path, content in before.items():
        assert (folder / path).read_bytes() == content


def test_outputs_get_the_mode_of_a_plain_write(trained):
    # Bug: mkstemp made every atomically written file owner-only (0600).
    run, _ = trained
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.keras", "samples.png", "samples_large.png", "train_summary.json",
                 "checkpoints/ckpt.keras", "checkpoints/run.json"):
        assert os.stat(run / name).st_mode & 0o777 == 0o666 & ~umask, name


def test_train_writes_an_enlarged_grid(trained):
    run, _ = trained
    with Image.open(run / "samples.png") as small, Image.open(run / "samples_large.png") as large:
        # 8x8 images enlarged 8x (nearest neighbour) to 64x64, 4 px padding: one column of 4 rows.
        assert large.size == (64 + 2 * 4, 4 * (64 + 4) + 4)
        cell = np.asarray(large)[4:68, 4:68]
        np.testing.assert_array_equal(cell, np.repeat(np.repeat(np.asarray(small)[1:9, 1:9], 8, 0), 8, 1))


def test_train_refuses_a_directory_holding_a_run(trained, capsys):
    run, _ = trained
    assert cli.main(["train", "--output-dir", str(run), "--steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err


# ------------------------------------------------------------ sample, evaluate
def test_sample_writes_npz_and_grid(model_runs, dirs):
    result = model_runs["sample_a"]
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(dirs["root"] / "a.npz") as saved:
        assert saved["images"].shape == (6, 8, 8, 3) and saved["images"].dtype == np.uint8
        np.testing.assert_array_equal(saved["labels"], [1, 2, 5, 1, 2, 5])
    with Image.open(dirs["root"] / "a.png") as grid:  # ceil(sqrt(6)) = 3 columns, 2 rows
        assert grid.size == (3 * 9 + 1, 2 * 9 + 1)
    assert "sampled 3/6 images" in result.stdout and "sampled 6/6 images" in result.stdout


def test_sample_same_seed_same_images(model_runs, dirs):
    for name in ("sample_a", "sample_b"):
        assert model_runs[name].returncode == 0, model_runs[name].stderr[-3000:]
    with np.load(dirs["root"] / "a.npz") as a, np.load(dirs["root"] / "b.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not os.path.exists(dirs["root"] / "samples.png")  # --npz alone writes no grid


def test_sample_with_a_solver_spacing_churn_and_threshold(model_runs, dirs):
    result = model_runs["sample_heun"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heun, 2 steps" in result.stdout
    with np.load(dirs["root"] / "heun.npz") as saved:
        assert saved["images"].shape == (6, 8, 8, 3) and saved["images"].dtype == np.uint8
    assert_user_error(model_runs["eta_misused"], "--eta applies to --sampler ddim", "dpmpp_2m_sde",
                      "Received: --sampler dpmpp_2m")


def test_evaluate_prints_bpd_json(model_runs):
    result = model_runs["evaluate"]
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert math.isfinite(report["bpd"]) and report["bpd"] > 0
    assert report["num_images"] == 16 and report["bpd_steps"] == 4
    assert report["bpd_estimate"] == "stratified 4-step estimate"
    for key in ("loss", "mse", "vb"):
        assert math.isfinite(report[key])


def _numpy_fid(a, b):
    """FID from the formula (Heusel et al. 2017) in float64 with scipy's matrix square root."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root))


def test_evaluate_fid_compares_generated_with_held_out_images(model_runs, trained):
    """The reported FID is the formula's on the model's images (the same flags in this process) and the
    first 16 test images with their labels, in the shipped shapes features."""
    result = model_runs["evaluate_fid"]
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["metric"] == "fid" and report["split"] == "test" and report["features"] == "shapes"
    assert report["num_images"] == 16 and report["sampler"] == "dpmpp_2m" and report["network_evaluations"] == 3
    model = keras.models.load_model(trained[0] / "model.keras")
    real, labels = next(iter(tfdiffusion.load_dataset("shapes", "test", 8, 16, training=False, seed=3).batches))
    generated = model.generate(16, sampler="dpmpp_2m", num_steps=3, seed=3, labels=labels.numpy(),
                               guidance_scale=2.0, jit_compile=False)
    extractor = features.shapes_features()
    expected = _numpy_fid(extractor(real).numpy(), extractor(generated).numpy())
    # float32 features; the covariances are rank 15 of 128, so sqrtm of their product is the loose part.
    assert report["fid"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert report["fid"] > 0.01  # 4 training steps: far from the data


def test_evaluate_kid_reports_mean_and_spread(model_runs):
    result = model_runs["evaluate_kid"]
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["metric"] == "kid" and report["kid_subset_size"] == 6 and report["num_images"] == 12
    assert math.isfinite(report["kid"]) and report["kid_std"] >= 0 and report["sampler"] == "ddim"


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name, fragments, must_not_exist", [
    ("unknown_preset", ["--preset", "no-such-preset"], ["p"]),  # the installed script
    ("zero_steps", ["--steps", "Received: 0"], ["z"]),
    ("unwritable", ["--output-dir", "Not a directory"], []),
    ("missing_model", ["--model", "no such file"], ["m.npz"]),
])
def test_user_errors_without_a_model(first_runs, dirs, name, fragments, must_not_exist):
    assert_user_error(first_runs[name], *fragments)
    for path in must_not_exist:
        assert not os.path.exists(dirs["root"] / path)
    assert dirs["blocker"].read_text() == BLOCKER_TEXT


def test_labels_out_of_range(model_runs, dirs):
    assert_user_error(model_runs["bad_labels"], "labels", f"[0, {NUM_CLASSES})")
    assert not os.path.exists(dirs["root"] / "bad.npz")
    assert not no_temp_files(dirs["root"])


def test_labels_for_an_unconditional_model(unconditional_model, dirs, capsys):
    # In process (the same `main` the command runs): generate() refuses before sampling.
    npz = dirs["root"] / "uncond.npz"
    assert cli.main(["sample", "--model", str(unconditional_model), "--label", "1",
                     "--npz", str(npz), "--no-jit-compile"]) == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("tfdiffusion: error: ")]
    assert len(errors) == 1 and "unconditional" in errors[0]
    assert not os.path.exists(npz)


# --------------------------------------------- resume: the same folder under any spelling (issue 23)
# A tiny run on an image folder, in this process (`cli.main`): 8x8, T = 10, 1 step, 1 sample of 1 step.
FOLDER_RUN_FLAGS = ["--batch-size", "2", "--image-size", "8", "--num-timesteps", "10", "--sample-steps", "1",
                    "--num-samples", "1", "--sample-every", "0", "--no-jit-compile", "--no-compilation-cache"]


def _run_in_process(capsys, *argv):
    """`cli.main(argv)`; returns (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A finished 1-step run on the image folder `data`, started in `root` with `--dataset data`."""
    root = tmp_path_factory.mktemp("folder_run")
    for label in ("a", "b"):
        os.makedirs(root / "data" / label)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 20, 200 if label == "a" else 9)).save(root / "data" / label / f"{i}.png")
    os.symlink(root / "data", root / "data-link")
    os.makedirs(root / "elsewhere")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = cli.main(["train", "--dataset", "data", "--output-dir", "run", "--steps", "1", *FOLDER_RUN_FLAGS])
    finally:
        os.chdir(cwd)
    assert code == 0
    return root


def _resumable_copy(folder_run, name, old_format=False):
    """A copy of the run; `old_format`: its run.json as the code before issue 23 wrote it (the dataset as
    given, relative to the directory the run started in, and no `dataset_kind`)."""
    run = folder_run / name
    shutil.copytree(folder_run / "run", run)
    if old_format:
        settings_file = run / "checkpoints" / "run.json"
        settings = json.loads(settings_file.read_text())
        settings["dataset"] = "data"
        del settings["dataset_kind"]
        settings_file.write_text(json.dumps(settings))
    return run


def test_a_run_records_its_image_folder_as_a_real_path(folder_run):
    settings = json.loads((folder_run / "run" / "checkpoints" / "run.json").read_text())
    assert settings["dataset"] == os.path.realpath(folder_run / "data") and settings["dataset_kind"] == "folder"
    summary = json.loads((folder_run / "run" / "train_summary.json").read_text())
    assert summary["dataset"] == settings["dataset"] and summary["steps"] == 1


@pytest.mark.parametrize("cwd, dataset, old_format, steps", [
    # Most resume to the step the run has (no training: the refusals came before it); one trains on.
    (".", "{root}/data", False, 1),      # the same folder spelled absolute: was refused as "different settings"
    (".", "data-link", False, 1),        # through a link: was refused as "different settings"
    ("elsewhere", "../data", False, 1),  # from another directory, relative to it: was "different settings"
    ("elsewhere", None, False, 2),       # from another directory, the run's own: the folder was not found
    (".", None, True, 1),                # a run.json of the code before: relative, read from the same directory
])
def test_resume_finds_the_same_folder_under_any_spelling(folder_run, monkeypatch, capsys, cwd, dataset, old_format,
                                                         steps):
    name = f"resumed-{cwd}-{dataset}-{old_format}".replace("/", "_").replace("{root}", "abs")
    run = _resumable_copy(folder_run, name, old_format)
    monkeypatch.chdir(folder_run / cwd)
    flags = [] if dataset is None else ["--dataset", dataset.format(root=folder_run)]
    code, out, err = _run_in_process(capsys, "train", "--output-dir", run, "--resume", "--steps", steps, *flags,
                                     *FOLDER_RUN_FLAGS)
    assert code == 0, err[-2000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 1 and summary["steps"] == steps
    settings = json.loads((run / "checkpoints" / "run.json").read_text())  # rewritten in this version's form
    assert settings["dataset"] == os.path.realpath(folder_run / "data") and settings["dataset_kind"] == "folder"
    if old_format:
        assert "written by an earlier version" in out and "relative to the current one" in out


def test_an_old_run_resumed_from_another_directory_says_what_it_looked_for(folder_run, monkeypatch, capsys):
    run = _resumable_copy(folder_run, "resumed-old-elsewhere", old_format=True)
    monkeypatch.chdir(folder_run / "elsewhere")
    code, _, err = _run_in_process(capsys, "train", "--output-dir", run, "--resume", "--steps", "2",
                                   *FOLDER_RUN_FLAGS)
    assert code == 2 and "Traceback" not in err
    assert "'data'" in err and "not 'shapes' or an existing directory" in err, err
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 1  # untouched


def _int_flags():
    """(command, flag) of every flag the parser reads as an integer."""
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, a.option_strings[0]) for name, sub in sorted(action.choices.items()) for a in sub._actions
            if a.option_strings and a.type is not None and a.type.__name__.startswith(("integer", "seed", "label"))]


REQUIRED = {"train": ["--output-dir", "r"], "sample": ["--model", "m.keras"],
            "export": ["--model", "m", "--output", "o"], "evaluate": ["--model", "m.keras", "--dataset", "shapes"],
            "convert": ["--from-diffusers", "x", "--output", "x.keras"]}


@pytest.mark.parametrize("command, flag", _int_flags())
def test_every_integer_flag_refuses_values_beyond_int64(command, flag):
    # Bug: --steps 2**70 trained without end, --version 2**63 exported, --seed 2**70 failed in TensorFlow.
    assert len(_int_flags()) >= 20
    with pytest.raises(cli.CLIError, match=f"argument {flag}: must be an integer"):
        cli.build_parser().parse_args([command, *REQUIRED[command], flag, str(2**63)])


# ------------------------------------------------------------------ convert
def test_convert_from_diffusers_writes_a_loadable_model(tmp_path):
    from tests.convert.reference import make_pipeline

    folder = make_pipeline(tmp_path, "deep_scale_shift")
    target = tmp_path / "converted.keras"
    result = subprocess.run(command("convert", "--from-diffusers", folder, "--output", target),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {target}" in result.stdout and "M parameters" in result.stdout
    assert isinstance(keras.models.load_model(target), tfdiffusion.DiffusionModel)
    again = subprocess.run(command("convert", "--from-diffusers", folder, "--output", target),
                           capture_output=True, text=True, timeout=600)
    assert_user_error(again, "exists", "--overwrite")
    missing = subprocess.run(command("convert", "--from-diffusers", tmp_path / "nothing", "--output",
                                     tmp_path / "x.keras"), capture_output=True, text=True, timeout=600)
    assert_user_error(missing, "nothing")
    assert not os.path.exists(tmp_path / "x.keras")


# ------------------------------------------------------------------ console
def test_native_chatter_is_recognised_and_real_errors_are_not():
    from tfdiffusion import console

    chatter = [b"I0000 00:00:1795913478.300988   11682 cudart_stub.cc:31] Could not find cuda drivers",
               b"W0000 00:00:1795913478.300988   11682 xla_ops.cc:12] Ignoring Assert operator",
               b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
               b"E0000 00:00:1795913485.845894   11682 cuda_platform.cc:52] failed call to cuInit: INTERNAL"]
    kept = [b"tfdiffusion: error: --steps must be an integer >= 1",
            b"F0000 00:00:1.5   1 xla.cc:3] Check failed: out of memory",
            b"E0000 00:00:1.5   1 xla_compiler.cc:3] compilation failed",
            b"Traceback (most recent call last):"]
    assert all(console.is_chatter(line) for line in chatter)
    assert not any(console.is_chatter(line) for line in kept)


def test_console_script_hides_tensorflow_start_up_chatter(tmp_path):
    # What pip's console script runs, under the command's name (the installed one when present).
    script = tmp_path / "tfdiffusion"
    script.write_text("import sys\nfrom tfdiffusion.cli import main\nsys.exit(main())\n")
    argv = [INSTALLED] if INSTALLED else [sys.executable, str(script)]
    result = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("tfdiffusion ")
    assert "cudart_stub" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr


# -------------------------------------------------------------------- help
EXPECTED_FLAGS = {
    "train": ["--preset", "--dataset", "--data-dir", "--output-dir", "--steps", "--epochs",
              "--batch-size", "--image-size", "--learning-rate", "--num-timesteps", "--seed",
              "--sampler", "--sample-steps", "--num-samples", "--guidance-scale", "--jit-compile",
              "--no-jit-compile", "--resume", "--strategy", "--mixed-precision", "--sample-every",
              "--gradient-checkpointing", "--no-gradient-checkpointing"],
    "sample": ["--model", "--num-images", "--sampler", "--steps", "--spacing", "--eta", "--churn", "--threshold",
               "--seed", "--labels",
               "--label", "--guidance-scale", "--output", "--npz", "--batch-size", "--allow-long-run"],
    "evaluate": ["--model", "--dataset", "--split", "--metric", "--bpd-steps", "--batch-size",
                 "--num-batches", "--seed"],
    "convert": ["--from-diffusers", "--output", "--overwrite"],
    "export": ["--model", "--output", "--version", "--max-images", "--samplers", "--default-sampler",
               "--jit-compile", "--overwrite"],
}


def _subparser(name):
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", sorted(EXPECTED_FLAGS))
def test_help_documents_every_flag(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    parser_actions = [a for a in _subparser(command)._actions if a.option_strings != ["-h", "--help"]]
    flags = set(EXPECTED_FLAGS[command]) | {f for a in parser_actions for f in a.option_strings}
    for flag in flags:
        assert flag in text, flag
    for action in parser_actions:  # every help says its default (or that it is required)
        assert "default" in action.help or "required" in action.help, action.option_strings


# ------------------------------------------------------------------ images
def test_grid_places_images_with_padding_and_keeps_grayscale(tmp_path):
    tiles = (np.arange(3 * 2 * 2) + 1).astype(np.uint8).reshape(3, 2, 2, 1)
    path = tmp_path / "grid.png"
    images.save_grid(tiles, path, columns=2)
    with Image.open(path) as grid:
        assert grid.mode == "L" and grid.size == (2 * 3 + 1, 2 * 3 + 1)
        pixels = np.asarray(grid)
    np.testing.assert_array_equal(pixels[1:3, 1:3], tiles[0, ..., 0])
    np.testing.assert_array_equal(pixels[1:3, 4:6], tiles[1, ..., 0])
    np.testing.assert_array_equal(pixels[4:6, 1:3], tiles[2, ..., 0])
    assert not pixels[4:6, 4:6].any()  # the empty fourth cell
    assert not pixels[[0, 3, 6]].any() and not pixels[:, [0, 3, 6]].any()  # 1 px padding


def test_npz_writer_refuses_non_uint8_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        images.save_npz(tmp_path / "x.npz", np.zeros([2, 4, 4, 3], np.float32))
    assert os.listdir(tmp_path) == []
