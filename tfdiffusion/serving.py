"""Clients of an exported model on TF Serving: request inputs, the REST body and gRPC `PredictRequest`, decoding.

A `generate_<sampler>` signature (and `generate` = `serving_default`) takes
`seed` int64 `[]`, `num_steps` int32 `[]`, `labels` int32 `[N]` and
`guidance_scale` float32 `[]` (class-conditional models) or `num_images`
int32 `[]` (unconditional), and the sampler's options (DDIM: `eta` float32
`[]`); it returns `images` uint8 `[N, H, W, C]`. Every input is required.

    inputs = serving.generate_inputs(seed=0, num_steps=50, labels=[0, 1, 2, 3], eta=0.0)
    body = serving.rest_request(inputs)                  # POST to /v1/models/NAME:predict
    images = serving.decode_rest_response(response_json)  # uint8 [4, H, W, C]

gRPC needs the protos of `tensorflow-serving-api` (`pip install "tfdiffusion[serving]"`).
To sample from an exported model in-process, see `served_model.load_saved_model`.
"""

import json
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from tfdiffusion import validation

__all__ = ["ServingError", "decode_predict_response", "decode_rest_response", "generate_inputs",
           "predict_request", "rest_request"]


class ServingError(RuntimeError):
    """The server answered with an error (e.g. a request over the model's limits)."""


def _finite(name: str, value: Any) -> float:
    return validation.check_number(name, value)


def generate_inputs(seed: int, num_steps: int, labels: Optional[Sequence[int]] = None,
                    num_images: Optional[int] = None, guidance_scale: Optional[float] = None,
                    **options: float) -> Dict[str, np.ndarray]:
    """The inputs of a `generate` request, as numpy arrays of the signature's dtypes.

    Args:
        seed: int; the same seed and settings give the same images.
        num_steps: sampling steps in [1, T] (the server checks T).
        labels: one class per image (class-conditional models).
        num_images: the number of images (unconditional models).
        guidance_scale: classifier-free guidance scale (conditional models;
            default 1.0, no guidance).
        **options: the sampler's options, e.g. `eta=0.0` for DDIM (its
            signature requires it).

    Returns:
        `{name: numpy array}`: `seed` int64, `num_steps` int32, `labels` int32
        `[N]` and `guidance_scale` float32, or `num_images` int32, then each
        option float32.
    """
    inputs = {"seed": np.int64(validation.check_seed("seed", seed, allow_none=False)),
              "num_steps": np.int32(validation.check_int("num_steps", num_steps, 1, 2**31 - 1))}
    if (labels is None) == (num_images is None):
        raise ValueError("Give `labels` (class-conditional model) or `num_images` (unconditional), not both "
                         f"or neither. Received: labels={labels!r}, num_images={num_images!r}")
    if labels is not None:
        values = np.asarray(labels)
        if values.ndim != 1 or not (values.size == 0 or np.issubdtype(values.dtype, np.integer)):
            raise TypeError(f"`labels` must be a list of integers, one per image. Received: labels={labels!r}")
        inputs["labels"] = values.astype(np.int32)
        inputs["guidance_scale"] = np.float32(_finite("guidance_scale", 1.0 if guidance_scale is None
                                                      else guidance_scale))
    else:
        if guidance_scale is not None:
            raise ValueError("`guidance_scale` needs a class-conditional model (give `labels`). Received: "
                             f"guidance_scale={guidance_scale!r}")
        inputs["num_images"] = np.int32(validation.check_int("num_images", num_images, 1, 2**31 - 1))
    for name, value in sorted(options.items()):
        inputs[name] = np.float32(_finite(name, value))
    return inputs


def _json_value(value: np.ndarray) -> Any:
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        raise ValueError("REST (JSON) requests cannot carry NaN or infinite values")
    return value.tolist()


def rest_request(inputs: Mapping[str, Any], signature_name: str = "generate") -> Dict[str, Any]:
    """The JSON body of `POST /v1/models/NAME[/versions/V]:predict` in TF Serving's columnar format.

    Args:
        inputs: `{name: array}`, e.g. from `generate_inputs`.
        signature_name: "generate" (= "serving_default"), "generate_ddpm", "denoise", ...

    Returns:
        `{"signature_name": ..., "inputs": {name: nested lists or scalars}}`;
        `json.dumps` it. (The row format, "instances", cannot carry the scalar
        inputs.)
    """
    return {"signature_name": signature_name, "inputs": {name: _json_value(v) for name, v in inputs.items()}}


def _check_error(response: Mapping[str, Any]) -> None:
    if "error" in response:
        raise ServingError(f"The model server refused the request: {response['error']}")


def decode_rest_response(response: Union[str, bytes, Mapping[str, Any]], output: str = "images") -> np.ndarray:
    """An output of a REST `:predict` response: uint8 `[N, H, W, C]` for "images".

    Args:
        response: the response body (JSON text or the parsed dict).
        output: the output's name (`images` of `generate`; `pred_eps`,
            `pred_xstart`, `model_output` of `denoise`).

    Raises:
        ServingError: the server answered `{"error": ...}`.
        ValueError: the response has no such output, or images outside [0, 255].
    """
    if isinstance(response, (str, bytes)):
        response = json.loads(response)
    _check_error(response)
    if "outputs" not in response:
        raise ValueError(f"Expected a columnar :predict response with 'outputs'. Received keys {sorted(response)}")
    outputs = response["outputs"]
    if isinstance(outputs, dict):  # several outputs: by name
        if output not in outputs:
            raise ValueError(f"The response has no output {output!r}. Received outputs {sorted(outputs)}")
        outputs = outputs[output]
    return _as_output(np.asarray(outputs), output)


def _as_output(values: np.ndarray, output: str) -> np.ndarray:
    if output != "images":
        return values.astype(np.float32)
    if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() > 255):
        raise ValueError(f"Expected uint8 images. Received dtype {values.dtype} with values from "
                         f"{values.min()} to {values.max()}")
    return values.astype(np.uint8)


def _serving_protos():
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError:
        raise ImportError("gRPC requests need TF Serving's protos: pip install \"tfdiffusion[serving]\" "
                          "(tensorflow-serving-api)") from None
    return predict_pb2


def predict_request(inputs: Mapping[str, Any], model_name: str, signature_name: str = "generate",
                    version: Optional[int] = None):
    """A gRPC `tensorflow.serving.PredictRequest` for `PredictionService.Predict`.

    Args:
        inputs: `{name: array}` of the signature's dtypes, e.g. from `generate_inputs`.
        model_name: the model's name on the server (`--model_name`).
        signature_name: the signature to call.
        version: a specific version (default: the server's latest).

    Returns:
        The `PredictRequest` (send it with `PredictionServiceStub(channel).Predict`).
    """
    import tensorflow as tf

    request = _serving_protos().PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = validation.check_int("version", version, 0)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


def decode_predict_response(response, output: str = "images") -> np.ndarray:
    """An output of a gRPC `PredictResponse`: uint8 `[N, H, W, C]` for "images"."""
    import tensorflow as tf

    if output not in response.outputs:
        raise ValueError(f"The response has no output {output!r}. Received outputs {sorted(response.outputs)}")
    return _as_output(tf.make_ndarray(response.outputs[output]), output)
