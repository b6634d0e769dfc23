"""Tests of the serving clients (REST body, gRPC PredictRequest, decoding) and of sampling from an exported SavedModel."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

import tfdiffusion
from tests import export_helpers as helpers
from tests import serving_emulator
from tfdiffusion import serving


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return helpers.shared_export(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def _request_inputs(name):
    request = helpers.REQUESTS[name]
    options = dict(request.get("options", {}), **({"eta": request["eta"]} if "eta" in request else {}))
    return serving.generate_inputs(request["seed"], request["num_steps"], labels=request["labels"],
                                   guidance_scale=request["guidance_scale"], **options)


def test_generate_inputs_have_the_signature_dtypes(loaded):
    inputs = _request_inputs("ddim_guided_eta")
    specs = loaded.signatures["generate_ddim"].structured_input_signature[1]
    assert set(inputs) == set(specs)
    for name, spec in specs.items():
        assert inputs[name].dtype == spec.dtype.as_numpy_dtype and spec.shape.is_compatible_with(inputs[name].shape)
    unconditional = serving.generate_inputs(3, 10, num_images=2)
    assert unconditional == {"seed": 3, "num_steps": 10, "num_images": 2}
    assert unconditional["seed"].dtype == np.int64 and unconditional["num_images"].dtype == np.int32


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(labels=[0.5, 1]), TypeError, "labels"),
    (dict(labels=[[0, 1]]), TypeError, "labels"),
    (dict(labels=[0], num_images=1), ValueError, "not both"),
    (dict(), ValueError, "neither"),
    (dict(num_images=2, guidance_scale=2.0), ValueError, "guidance_scale"),
    (dict(labels=[0], guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(labels=[0], eta=float("inf")), ValueError, "eta"),
    (dict(labels=[0], seed=1.5), TypeError, "seed"),
    (dict(labels=[0], num_steps=0), ValueError, "num_steps"),
])
def test_generate_inputs_refuse_bad_values(kwargs, error, fragment):
    arguments = dict(seed=0, num_steps=2)
    arguments.update(kwargs)
    with pytest.raises(error, match=fragment):
        serving.generate_inputs(**arguments)


@pytest.mark.parametrize("name", sorted(helpers.REQUESTS))
def test_rest_round_trip_equals_generate(loaded, exported, name):
    signature = f"generate_{helpers.REQUESTS[name]['sampler']}"
    body = json.dumps(serving.rest_request(_request_inputs(name), signature_name=signature))
    status, response = serving_emulator.rest_predict(loaded, body)
    assert status == 200, response
    helpers.assert_same_images(serving.decode_rest_response(response), exported[2][name])


def test_rest_body_shape(loaded):
    body = serving.rest_request(serving.generate_inputs(1, 2, labels=[0, 2], eta=0.0))
    assert body == {"signature_name": "generate", "inputs": {"seed": 1, "num_steps": 2, "labels": [0, 2],
                                                            "guidance_scale": 1.0, "eta": 0.0}}
    json.dumps(body)  # plain JSON types


@pytest.mark.parametrize("name", sorted(helpers.REQUESTS))
def test_grpc_round_trip_equals_generate(loaded, exported, name):
    signature = f"generate_{helpers.REQUESTS[name]['sampler']}"
    request = serving.predict_request(_request_inputs(name), "tiny", signature_name=signature, version=1)
    assert request.model_spec.name == "tiny" and request.model_spec.version.value == 1
    response = predict_pb2.PredictResponse.FromString(
        serving_emulator.grpc_predict(loaded, request.SerializeToString()))
    helpers.assert_same_images(serving.decode_predict_response(response), exported[2][name])


def test_denoise_over_rest_has_named_outputs(loaded, exported):
    model, _, _ = exported
    x_t = np.random.default_rng(1).standard_normal([1, 8, 8, 3]).astype(np.float32)
    body = serving.rest_request({"x_t": x_t, "t": np.array([5], np.int32), "labels": np.array([2], np.int32)},
                                signature_name="denoise")
    status, response = serving_emulator.rest_predict(loaded, json.dumps(body))
    assert status == 200, response
    assert set(json.loads(response)["outputs"]) == {"model_output", "pred_eps", "pred_xstart"}
    eps = model.ema_network(x_t, np.array([5]), y=np.array([2]), training=False).numpy()
    np.testing.assert_allclose(serving.decode_rest_response(response, output="pred_eps"), eps, atol=1e-5)


def test_rest_error_is_raised_with_the_servers_message(loaded):
    body = serving.rest_request(serving.generate_inputs(0, 2, labels=[0] * 5, eta=0.0))
    status, response = serving_emulator.rest_predict(loaded, json.dumps(body))
    assert status == 400
    with pytest.raises(serving.ServingError, match="max_images=4"):
        serving.decode_rest_response(response)


def test_grpc_wrong_dtype_refused(loaded):
    inputs = serving.generate_inputs(0, 2, labels=[0], eta=0.0)
    inputs["num_steps"] = np.int64(2)
    request = serving.predict_request(inputs, "tiny")
    with pytest.raises(serving_emulator.RequestError, match=r"Expects arg\[num_steps\] to be int32 but int64"):
        serving_emulator.grpc_predict(loaded, request.SerializeToString())


def test_decode_refuses_non_images():
    with pytest.raises(ValueError, match="uint8 images"):
        serving.decode_rest_response({"outputs": [[[[300]]]]})
    with pytest.raises(ValueError, match="no output 'images'"):
        serving.decode_rest_response({"outputs": {"pred_eps": [0.0]}})


# ----------------------------------------------------------- ServedModel
@pytest.fixture(scope="module")
def served(exported):
    return tfdiffusion.load_saved_model(exported[1])


def test_served_model_describes_itself(served, exported):
    assert served.image_shape == (8, 8, 3) and served.num_classes == helpers.NUM_CLASSES
    assert served.num_timesteps == helpers.T and served.max_images == helpers.MAX_IMAGES
    assert served.samplers == helpers.SAMPLERS and served.default_sampler == "ddim"
    # BASE/NAME resolves to its latest version.
    assert tfdiffusion.load_saved_model(exported[1].rsplit("/", 1)[0]).path == exported[1]


@pytest.mark.parametrize("name", sorted(helpers.REQUESTS))
def test_served_model_generate_equals_model_generate(served, exported, name):
    request = dict(helpers.REQUESTS[name])
    labels = request.pop("labels")
    images = served.generate(len(labels), labels=labels, **request)
    helpers.assert_same_images(images, exported[2][name])


def test_served_model_batches_above_the_cap(served, exported):
    model, _, _ = exported
    done = []
    images = served.generate(6, sampler="ddim", num_steps=2, seed=4, progress=lambda d, n: done.append((d, n)))
    assert images.shape == (6, 8, 8, 3) and done == [(0, 6), (4, 6), (6, 6)]
    # The first batch is generate's first max_images images (labels cycle through the classes).
    first = model.generate(4, sampler="ddim", num_steps=2, seed=4, jit_compile=False)
    # The SavedModel's graph and the Keras model's may round differently where oneDNN kernels
    # are on (TF_ENABLE_ONEDNN_OPTS): a uint8 step at most, on a few pixels.
    difference = np.abs(images[:4].astype(np.int32) - first.astype(np.int32))
    assert difference.max() <= 1 and np.mean(difference == 0) > 0.99, (difference.max(), np.mean(difference))


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(sampler="euler"), ValueError, "sampler"),
    (dict(sampler="ddpm", eta=0.5), ValueError, "eta"),
    (dict(num_steps=21), ValueError, "num_steps"),
    (dict(labels=[0, 3]), ValueError, "labels"),
    (dict(labels=[0.0, 1.0]), TypeError, "labels"),
    (dict(batch_size=5), ValueError, "batch_size"),
    (dict(jit_compile=True), ValueError, "jit_compile=False"),
    (dict(sampler="dpmpp_2m", num_steps=2), ValueError, r"num_steps.*\[3, 20\]"),
    (dict(sampler="heun", options={"eta": 1.0}), ValueError, "takes \\['churn'\\]"),
    (dict(sampler="heun", options={"churn": -1.0}), ValueError, "churn"),
    (dict(threshold=0.9), ValueError, "threshold=None"),
    (dict(spacing="karras"), ValueError, "spacing='leading'"),
])
def test_served_model_refuses_bad_arguments(served, kwargs, error, fragment):
    arguments = dict(num_steps=2)
    arguments.update(kwargs)
    with pytest.raises(error, match=fragment):
        served.generate(2, **arguments)


def test_load_generator_says_which_kind(exported, tmp_path):
    model, version_dir, _ = exported
    lines = []
    assert isinstance(tfdiffusion.load_generator(version_dir, log=lines.append), tfdiffusion.served_model.ServedModel)
    model.save(tmp_path / "tiny.keras")
    assert isinstance(tfdiffusion.load_generator(tmp_path / "tiny.keras", log=lines.append), tfdiffusion.DiffusionModel)
    assert lines[0] == f"Loaded SavedModel {version_dir}"
    assert lines[1] == f"Loaded Keras model {tmp_path / 'tiny.keras'}"
