"""The denoising network exported to ONNX and run with ONNX Runtime, the other deployment path (ONNX Runtime, TensorRT)."""

import numpy as np
import onnxruntime
import pytest

from tests import export_helpers as helpers
from tfdiffusion import export


def test_onnx_runtime_matches_the_keras_network(tmp_path):
    num_classes = helpers.NUM_CLASSES
    model = helpers.tiny_model(num_classes=num_classes, seed=2)
    path = export.export_onnx(model, tmp_path / "unet.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [(i.name, i.type) for i in session.get_inputs()]
    assert names == [("x_t", "tensor(float)"), ("t", "tensor(int32)"), ("labels", "tensor(int32)")]
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal([3, 8, 8, 3]).astype(np.float32)
    t = np.array([0, 7, helpers.T - 1], np.int32)
    labels = np.array([0, 2, helpers.NUM_CLASSES], np.int32)  # the last is the null label
    (onnx_output,) = session.run(None, {"x_t": x_t, "t": t, "labels": labels})
    keras_output = model.ema_network(x_t, t, y=labels, training=False).numpy()
    assert np.abs(keras_output).max() > 0.1  # the random weights give a non-trivial output
    # float32 convolutions in another order: agreement to about 1e-6 is expected, 1e-4 required.
    np.testing.assert_allclose(onnx_output, keras_output, atol=1e-4, rtol=0)


def test_onnx_refuses_to_overwrite(tmp_path):
    (tmp_path / "unet.onnx").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_onnx(helpers.tiny_model(), tmp_path / "unet.onnx")
    assert (tmp_path / "unet.onnx").read_bytes() == b"old"
