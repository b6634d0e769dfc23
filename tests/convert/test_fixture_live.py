"""Regenerates the diffusers fixture live and checks the committed one against it.

Runs only where torch and diffusers are installed (the `convert-reference`
extra); everything else in tests/convert reads the committed fixture
without them. Without TensorFlow, run it with `pytest --noconftest`.
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.numpy import load_file  # noqa: E402

from .make_diffusers_fixtures import build  # noqa: E402
from .reference import ARRAYS  # noqa: E402
from .reference import FIXTURES  # noqa: E402
from .reference import INFO  # noqa: E402


def _configs(root):
    found = {}
    for path in sorted(root.rglob("*.json")):
        if path.name != "reference.json":
            config = json.loads(path.read_text())
            config.pop("_diffusers_version", None)
            found[str(path.relative_to(root))] = config
    return found


def test_fixture_regenerates_live(tmp_path):
    info = build(str(tmp_path))
    fresh = dict(np.load(tmp_path / "reference.npz"))
    assert sorted(fresh) == sorted(ARRAYS)
    # Another torch/diffusers version may round differently: 1e-5 on values of magnitude ~1.
    for key, value in fresh.items():
        np.testing.assert_allclose(ARRAYS[key], value, rtol=0, atol=1e-5, err_msg=key)
    assert _configs(tmp_path) == _configs(FIXTURES)
    for name in INFO["unets"]:
        weights = f"{name}/unet/diffusion_pytorch_model.safetensors"
        committed, regenerated = load_file(FIXTURES / weights), load_file(tmp_path / weights)
        assert sorted(committed) == sorted(regenerated)
        for key in committed:
            np.testing.assert_allclose(committed[key], regenerated[key], rtol=0, atol=1e-6)
    info.pop("versions")
    assert info == {k: v for k, v in INFO.items() if k != "versions"}
