"""What TF Serving does with a Predict request, for tests: its model server cannot be installed here.

REST (`POST :predict`, columnar "inputs"): the JSON values are converted to
tensors of the dtypes the signature declares (an integer input refuses a
non-integer JSON number), the signature is called, and the outputs come
back as JSON: `{"outputs": value}` for a single output, `{"outputs": {name:
value}}` for several, `{"error": message}` on failure. gRPC: the
`PredictRequest` bytes are parsed, each `TensorProto` must have the
signature's dtype ("Expects arg ... to be int64 but int32 is provided"), and
the outputs return as `TensorProto`s in a `PredictResponse`.
"""

import json
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf


class RequestError(Exception):
    """A request the server refuses (the message is what it would answer)."""


def input_specs(loaded, signature_name: str) -> Dict[str, tf.TensorSpec]:
    if signature_name not in loaded.signatures:
        raise RequestError(f"Serving signature name: \"{signature_name}\" not found in signature def")
    return loaded.signatures[signature_name].structured_input_signature[1]


def call_signature(loaded, signature_name: str, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Calls the signature as the server does: every input present, dtypes as declared, errors as messages."""
    specs = input_specs(loaded, signature_name)
    missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
    if missing or extra:
        raise RequestError(f"input size does not match signature: missing {missing}, unexpected {extra}")
    for name, spec in specs.items():
        if tensors[name].dtype != spec.dtype.as_numpy_dtype:
            raise RequestError(f"Expects arg[{name}] to be {spec.dtype.name} but "
                               f"{tf.as_dtype(tensors[name].dtype).name} is provided")
    try:
        outputs = loaded.signatures[signature_name](**{k: tf.constant(v) for k, v in tensors.items()})
    except tf.errors.OpError as error:
        raise RequestError(error.message) from None
    return {name: value.numpy() for name, value in outputs.items()}


def _from_json(value, spec: tf.TensorSpec) -> np.ndarray:
    array = np.asarray(value)
    if spec.dtype.is_integer and array.size and not np.issubdtype(array.dtype, np.integer):
        raise RequestError(f"JSON Value: {json.dumps(value)[:60]} not of type {spec.dtype.name}")
    return array.astype(spec.dtype.as_numpy_dtype)


def rest_predict(loaded, body: str) -> Tuple[int, str]:
    """`(HTTP status, response body)` for a `:predict` request body."""
    try:
        request = json.loads(body)
        signature_name = request.get("signature_name", "serving_default")
        specs = input_specs(loaded, signature_name)
        tensors = {name: _from_json(value, specs[name]) if name in specs else np.asarray(value)
                   for name, value in request["inputs"].items()}
        outputs = call_signature(loaded, signature_name, tensors)
    except RequestError as error:
        return 400, json.dumps({"error": str(error)})
    values = {name: value.tolist() for name, value in outputs.items()}
    return 200, json.dumps({"outputs": next(iter(values.values())) if len(values) == 1 else values})


def grpc_predict(loaded, request_bytes: bytes) -> bytes:
    """The serialized `PredictResponse` for serialized `PredictRequest` bytes (RequestError if refused)."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest.FromString(request_bytes)
    tensors = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    outputs = call_signature(loaded, request.model_spec.signature_name or "serving_default", tensors)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response.SerializeToString()
