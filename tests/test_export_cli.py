"""`tfdiffusion export` and `tfdiffusion sample --model SAVEDMODEL_DIR`, run as real subprocesses."""

import os

import numpy as np
import pytest

from tests import export_helpers as helpers
from tfdiffusion import export


def cli(*args):
    return helpers.run_python("import sys; from tfdiffusion.cli import main; sys.exit(main(sys.argv[1:]))", *args)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-2000:]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_export") / "tiny.keras"
    helpers.tiny_model().save(path)
    return path


@pytest.fixture(scope="module")
def exported_by_cli(keras_file):
    output = keras_file.parent / "base" / "tiny"
    result = cli("export", "--model", keras_file, "--output", output, "--max-images", 4, "--samplers", "ddim", "ddpm")
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_export_writes_version_1(exported_by_cli):
    output, result = exported_by_cli
    assert export.existing_versions(output) == [1]
    assert f"Wrote {output / '1'}" in result.stdout
    assert os.path.isfile(output / "1" / "saved_model.pb")


def test_second_export_refused(exported_by_cli, keras_file):
    output, _ = exported_by_cli
    assert_user_error(cli("export", "--model", keras_file, "--output", output, "--version", 1), "already exists")


def test_export_bad_flags(keras_file, tmp_path):
    assert_user_error(cli("export", "--model", keras_file, "--output", tmp_path / "m", "--max-images", 0),
                      "--max-images")
    assert_user_error(cli("export", "--model", tmp_path / "missing.keras", "--output", tmp_path / "m"), "--model")
    assert not os.path.exists(tmp_path / "m")


def test_sample_from_saved_model(exported_by_cli, keras_file, tmp_path):
    output, _ = exported_by_cli
    result = cli("sample", "--model", output, "--num-images", 3, "--steps", 2, "--seed", 5, "--label", 1,
                 "--npz", tmp_path / "served.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Loaded SavedModel {output / '1'}" in result.stdout
    from_keras = cli("sample", "--model", keras_file, "--num-images", 3, "--steps", 2, "--seed", 5, "--label", 1,
                     "--no-jit-compile", "--npz", tmp_path / "keras.npz")
    assert from_keras.returncode == 0, from_keras.stderr[-3000:]
    assert f"Loaded Keras model {keras_file}" in from_keras.stdout
    with np.load(tmp_path / "served.npz") as served, np.load(tmp_path / "keras.npz") as keras_images:
        helpers.assert_same_images(served["images"], keras_images["images"])
