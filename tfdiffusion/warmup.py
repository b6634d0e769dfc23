"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`, a TFRecord of `PredictionLog`s.

TF Serving replays these requests when it loads a version, so the first
user's request does not pay for graph optimisation (or XLA compilation).
The records are `tensorflow.serving.PredictionLog` messages. They are built
here from a four-message subset of TF Serving's protos (same field numbers;
a map value of serialized `TensorProto` bytes has the same wire format as
the message itself), so exporting needs no `tensorflow-serving-api`.
"""

from typing import Dict, Iterable, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

__all__ = ["WARMUP_FILE", "prediction_log_class", "write_warmup_requests"]

# Where TF Serving looks for warm-up requests, relative to the version directory.
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

_FIELD = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, message type)]: TF Serving's field numbers
# (tensorflow_serving/apis/model.proto, predict.proto, prediction_log.proto).
_MESSAGES = {
    "ModelSpec": [("name", 1, _FIELD.TYPE_STRING, None), ("signature_name", 3, _FIELD.TYPE_STRING, None)],
    "PredictRequest": [("model_spec", 1, _FIELD.TYPE_MESSAGE, "ModelSpec"),
                       ("inputs", 2, _FIELD.TYPE_MESSAGE, "PredictRequest.InputsEntry")],
    "PredictLog": [("request", 1, _FIELD.TYPE_MESSAGE, "PredictRequest")],
    "PredictionLog": [("predict_log", 6, _FIELD.TYPE_MESSAGE, "PredictLog")],
}
_PACKAGE = "tfdiffusion.serving_subset"


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="tfdiffusion/serving_subset.proto", package=_PACKAGE,
                                               syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=_FIELD.LABEL_OPTIONAL)
            if type_name is not None:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if field_name == "inputs":  # map<string, TensorProto>, the value kept as its bytes
                field.label = _FIELD.LABEL_REPEATED
                entry = message.nested_type.add(name="InputsEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_FIELD.TYPE_BYTES, label=_FIELD.LABEL_OPTIONAL)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def prediction_log_class() -> type:
    """The `PredictionLog` message class of the subset (wire-compatible with TF Serving's)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.PredictionLog"))


def write_warmup_requests(path: str, model_name: str,
                          requests: Iterable[Tuple[str, Dict[str, np.ndarray]]]) -> int:
    """Writes `PredictionLog` records of `Predict` requests to the TFRecord file `path`.

    Args:
        path: the file to write (`VERSION_DIR/assets.extra/tf_serving_warmup_requests`).
        model_name: the model's name in TF Serving (`model_spec.name`).
        requests: `(signature_name, {input name: numpy array of the input's dtype})`.

    Returns:
        The number of records (TF Serving reads at most 1000).
    """
    requests = list(requests)
    if len(requests) > 1000:
        raise ValueError(f"TF Serving reads at most 1000 warm-up records. Received {len(requests)}")
    log_class = prediction_log_class()
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            log = log_class()
            request = log.predict_log.request
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for key, value in inputs.items():
                request.inputs[key] = tf.make_tensor_proto(value).SerializeToString()
            writer.write(log.SerializeToString())
    return len(requests)
