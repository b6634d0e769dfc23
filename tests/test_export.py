"""Tests of `export_saved_model`: a real SavedModel in TF Serving's layout, loaded in a process that imports only TensorFlow."""

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

import tfdiffusion
from tests import export_helpers as helpers
from tfdiffusion import export
from tfdiffusion import warmup

# Runs in a fresh interpreter that imports TensorFlow and numpy only: loads the
# SavedModel, answers the requests, lists the graph's ops against TensorFlow's
# own op registry, and reports what got imported.
FRESH_PROCESS = r"""
import json, resource, sys, time
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

version_dir, requests_path, out_path = sys.argv[1:4]
start = time.perf_counter()
loaded = tf.saved_model.load(version_dir)
load_seconds = time.perf_counter() - start
requests = json.load(open(requests_path))
images = {}
for name, (signature, inputs) in requests.items():
    tensors = {k: tf.constant(np.asarray(v["value"], dtype=v["dtype"])) for k, v in inputs.items()}
    images[name] = loaded.signatures[signature](**tensors)["images"].numpy()
for variable in loaded.ema_weights:  # the same request without the weights
    variable.assign(tf.zeros_like(variable))
signature, inputs = requests["ddim_plain"]
images["zero_weights"] = loaded.signatures[signature](**{k: tf.constant(np.asarray(v["value"], dtype=v["dtype"]))
                                                        for k, v in inputs.items()})["images"].numpy()
np.savez(out_path, **images)
# One over-cap request of a million labels: x_T alone would take 10**6 * 8 * 8 * 3 * 4 bytes = 768 MB.
oversize = dict(seed=tf.constant(0, tf.int64), num_steps=tf.constant(1), guidance_scale=tf.constant(2.0),
                eta=tf.constant(0.0), labels=tf.constant(np.zeros([10**6], np.int32)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    loaded.signatures["generate"](**oversize)
    oversize_error = None
except tf.errors.InvalidArgumentError as error:
    oversize_error = error.message
peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
proto = saved_model_pb2.SavedModel()
proto.ParseFromString(open(version_dir + "/saved_model.pb", "rb").read())
graph = proto.meta_graphs[0].graph_def
ops = {node.op for node in graph.node}
for function in graph.library.function:
    ops |= {node.op for node in function.node_def}
print(json.dumps(dict(
    load_seconds=load_seconds, ops=sorted(ops), oversize_error=oversize_error, peak_growth_mb=peak_growth_mb,
    unregistered=sorted(op for op in ops if op_def_registry.get(op) is None),
    signatures=sorted(loaded.signatures),
    imported=sorted(m for m in sys.modules if m.split(".")[0] in ("tfdiffusion", "tensorflow_probability", "sonnet")))))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return helpers.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory):
    """The fresh process's report and the images it generated."""
    _, version_dir, _ = exported
    folder = tmp_path_factory.mktemp("fresh")
    requests = {}
    for name, request in helpers.REQUESTS.items():
        signature, inputs = helpers.signature_inputs(request)
        requests[name] = (signature, {k: {"value": np.asarray(v).tolist(), "dtype": np.asarray(v).dtype.name}
                                      for k, v in inputs.items()})
    (folder / "requests.json").write_text(json.dumps(requests))
    report = helpers.run_json(FRESH_PROCESS, version_dir, folder / "requests.json", folder / "images.npz")
    with np.load(folder / "images.npz") as images:
        return report, dict(images)


@pytest.mark.parametrize("name", sorted(helpers.REQUESTS))
def test_fresh_process_images_equal_generate(fresh, exported, name):
    _, images = fresh
    _, _, references = exported
    assert images[name].dtype == np.uint8 and images[name].shape == references[name].shape
    helpers.assert_same_images(images[name], references[name])
    assert len(np.unique(images[name])) > 10  # real images, not a constant


def test_fresh_process_imports_only_tensorflow(fresh):
    report, _ = fresh
    assert report["imported"] == []
    assert {"generate", "serving_default", "generate_ddim", "generate_ddpm", "denoise"} <= set(report["signatures"])


def test_oversize_batch_never_allocated(fresh):
    """A million labels against a cap of 4: refused, and the peak memory hardly moves."""
    report, _ = fresh
    assert "must be between 1 and max_images=4" in report["oversize_error"]
    assert "1000000" in report["oversize_error"]
    # The labels themselves are 4 MB; x_T for them would be 768 MB and the network's activations far more.
    assert report["peak_growth_mb"] < 100, report


def test_every_op_is_core_tensorflow(fresh):
    report, _ = fresh
    print("ops in the exported graphs:", ", ".join(report["ops"]))
    assert report["unregistered"] == []
    assert not set(report["ops"]) & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert not [op for op in report["ops"] if ">" in op]  # custom-op namespaces (Addons>..., ...)
    # The sampling loop runs inside the graph, with stateless Philox draws.
    assert {"While", "StatelessWhile"} & set(report["ops"])
    assert "StatelessRandomNormalV2" in report["ops"]


def test_images_depend_on_the_exported_weights(fresh, exported):
    """The equality above is not vacuous: zeroing the loaded weights changes the images."""
    _, images = fresh
    _, _, references = exported
    assert not np.array_equal(images["zero_weights"], references["ddim_plain"])


def _cli(*args):
    return subprocess.run(["saved_model_cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_saved_model_cli_show_lists_signatures(exported):
    _, version_dir, _ = exported
    result = _cli("show", "--dir", version_dir, "--all")
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = {m.group(1): m.group(2) for m in re.finditer(
        r"signature_def\['(\w+)'\]:(.*?)(?=signature_def\[|\Z)", result.stdout, re.S)}
    expected = {
        "generate": {"seed": ("DT_INT64", "()"), "num_steps": ("DT_INT32", "()"), "labels": ("DT_INT32", "(-1)"),
                     "guidance_scale": ("DT_FLOAT", "()"), "eta": ("DT_FLOAT", "()"),
                     "images": ("DT_UINT8", "(-1, 8, 8, 3)")},
        "generate_ddpm": {"seed": ("DT_INT64", "()"), "labels": ("DT_INT32", "(-1)"),
                          "images": ("DT_UINT8", "(-1, 8, 8, 3)")},
        "denoise": {"x_t": ("DT_FLOAT", "(-1, 8, 8, 3)"), "t": ("DT_INT32", "(-1)"),
                    "labels": ("DT_INT32", "(-1)"), "pred_eps": ("DT_FLOAT", "(-1, 8, 8, 3)"),
                    "pred_xstart": ("DT_FLOAT", "(-1, 8, 8, 3)")},
    }
    for signature, tensors in expected.items():
        block = blocks[signature]
        for name, (dtype, shape) in tensors.items():
            assert re.search(rf"\['{name}'\] tensor_info:\s+dtype: {dtype}\s+shape: {re.escape(shape)}", block), \
                (signature, name, block)
    assert "eta" not in blocks["generate_ddpm"]
    def tensors(block):
        return re.findall(r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (.*)", block)

    assert tensors(blocks["serving_default"]) == tensors(blocks["generate"])


def test_saved_model_cli_run_generate(exported, tmp_path):
    model, version_dir, _ = exported
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, seed=np.int64(5), num_steps=np.int32(2), labels=np.array([2, 0], np.int32),
             guidance_scale=np.float32(1.5), eta=np.float32(0.0))
    result = _cli("run", "--dir", version_dir, "--tag_set", "serve", "--signature_def", "generate", "--inputs",
                  ";".join(f"{name}={inputs}[{name}]" for name in ("seed", "num_steps", "labels", "guidance_scale",
                                                                      "eta")), "--outdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    images = np.load(tmp_path / "images.npy")
    expected = model.generate(2, sampler="ddim", num_steps=2, seed=5, labels=[2, 0], guidance_scale=1.5,
                              jit_compile=False)
    helpers.assert_same_images(images, expected)


def test_layout_and_description(exported):
    _, version_dir, _ = exported
    assert os.path.basename(version_dir) == "1"
    assert os.listdir(os.path.dirname(version_dir)) == ["1"]  # no temporary folder left
    with open(os.path.join(version_dir, export.METADATA_FILE)) as file:
        metadata = json.load(file)
    assert metadata["image_shape"] == [8, 8, 3] and metadata["num_classes"] == helpers.NUM_CLASSES
    assert metadata["num_timesteps"] == helpers.T and metadata["max_images"] == helpers.MAX_IMAGES
    assert metadata["samplers"]["ddim"]["options"] == {"eta": 0.0} and metadata["default_sampler"] == "ddim"
    assert set(metadata["samplers"]) == set(helpers.SAMPLERS) and metadata["threshold"] is None
    assert metadata["samplers"]["dpmpp_2m"]["min_steps"] == 3 and metadata["samplers"]["heun"]["options"] == {
        "churn": 0.0}


def _conv_count(graph_def):
    functions = list(graph_def.library.function)
    return (sum(node.op == "Conv2D" for node in graph_def.node)
            + sum(node.op == "Conv2D" for function in functions for node in function.node_def))


def test_network_graph_is_saved_once_per_timestep_dtype(exported):
    """Every signature calls one library function for the network: its convolutions are saved once for
    integer timesteps (DDIM, DDPM, DPM-Solver++, `denoise`) and once for Heun's continuous ones, not once
    per call site (5 signatures, both branches of the guidance `tf.cond`, Heun's two evaluations)."""
    from tensorflow.core.protobuf import saved_model_pb2

    model, version_dir, _ = exported
    single = tf.function(lambda x, t, y: model.ema_network(x, t, y=y, training=False), autograph=False)
    per_trace = _conv_count(single.get_concrete_function(
        tf.TensorSpec((None, 8, 8, 3), tf.float32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int32)).graph.as_graph_def())
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    assert per_trace >= 5  # the tiny UNet's input, block and output convolutions
    assert _conv_count(proto.meta_graphs[0].graph_def) == 2 * per_trace


def test_default_export_offers_every_registered_sampler(exported):
    model, _, _ = exported
    names, default, _ = export._check_arguments(model, None, "ddim", 4, False, False)
    assert names == tfdiffusion.sampler_names() and default == "ddim"


def test_warmup_file_is_tf_serving_prediction_logs(exported):
    """Parsed with TF Serving's own protos; each record fits its signature, and one is answered."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tests import serving_emulator

    _, version_dir, _ = exported
    loaded = tf.saved_model.load(version_dir)
    records = list(tf.data.TFRecordDataset(os.path.join(version_dir, warmup.WARMUP_FILE)).as_numpy_iterator())
    seen = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert log.WhichOneof("log_type") == "predict_log" and request.model_spec.name == "tiny"
        specs = serving_emulator.input_specs(loaded, request.model_spec.signature_name)
        assert set(request.inputs) == set(specs)
        for name, spec in specs.items():
            value = tf.make_ndarray(request.inputs[name])
            assert value.dtype == spec.dtype.as_numpy_dtype and spec.shape.is_compatible_with(value.shape)
        batch = tf.make_ndarray(request.inputs["labels"] if "labels" in request.inputs else request.inputs["t"]).size
        seen.add((request.model_spec.signature_name, batch))
    signatures = {"generate", "serving_default"} | {f"generate_{name}" for name in helpers.SAMPLERS}
    assert {(s, b) for s in signatures for b in (1, helpers.MAX_IMAGES)} | {("denoise", 1)} == seen
    largest = [r for r in records if prediction_log_pb2.PredictionLog.FromString(r).predict_log.request
               .model_spec.signature_name == "generate_ddpm"][-1]
    request = prediction_log_pb2.PredictionLog.FromString(largest).predict_log.request
    response = serving_emulator.grpc_predict(loaded, request.SerializeToString())
    from tensorflow_serving.apis import predict_pb2
    images = tf.make_ndarray(predict_pb2.PredictResponse.FromString(response).outputs["images"])
    assert images.shape == (helpers.MAX_IMAGES, 8, 8, 3) and images.dtype == np.uint8


def test_existing_version_refused_before_any_work(exported):
    model, version_dir, _ = exported
    before = os.path.getmtime(version_dir)
    start = time.perf_counter()
    with pytest.raises(FileExistsError, match="Version 1 already exists"):
        tfdiffusion.export_saved_model(model, os.path.dirname(version_dir), version=1)
    assert time.perf_counter() - start < 2.0  # refused before tracing anything
    assert os.path.getmtime(version_dir) == before


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(max_images=0), ValueError, "max_images"),
    (dict(max_images=2.0), TypeError, "max_images"),
    (dict(samplers=("nonesuch",)), ValueError, "samplers"),
    (dict(spacing="karras"), ValueError, "karras.* applies to the samplers dpmpp_2m"),
    (dict(samplers=("dpmpp_2m",), default_sampler="dpmpp_2m", threshold=1.5), ValueError, "threshold"),
    (dict(samplers=("ddpm",)), ValueError, "default_sampler"),
    (dict(version=-1), ValueError, "version"),
    (dict(jit_compile="yes"), TypeError, "jit_compile"),
])
def test_bad_arguments_refused(exported, tmp_path, kwargs, error, fragment):
    model, _, _ = exported
    with pytest.raises(error, match=fragment):
        export.export_saved_model(model, tmp_path / "m", **kwargs)
    assert not os.path.exists(tmp_path / "m")


def test_path_with_version_and_conflicting_version(tmp_path):
    assert export.split_version_path(tmp_path / "m" / "3") == (str(tmp_path / "m"), 3)
    assert export.split_version_path(tmp_path / "m", 2) == (str(tmp_path / "m"), 2)
    with pytest.raises(ValueError, match="ends in version 3"):
        export.split_version_path(tmp_path / "m" / "3", 4)


def test_not_a_model_refused(tmp_path):
    with pytest.raises(TypeError, match="DiffusionModel"):
        export.export_saved_model(object(), tmp_path / "m")
