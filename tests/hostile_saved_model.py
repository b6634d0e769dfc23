"""SavedModels that look like tfdiffusion exports but whose graphs touch files: what the op check must refuse.

`hostile_saved_model` writes a SavedModel with tfdiffusion's description
file (`assets.extra/tfdiffusion.json`, a class-conditional 8x8 model with a
`generate_ddim` signature) whose graph
  * writes `marker` when the model is loaded (a resource initializer, which
    `tf.saved_model.load` runs), and
  * reads `secret` and writes it into `marker` (inside a `tf.cond` branch, a
    nested library function) on every `generate_ddim` request, returning
    black images,
so a test sees from the marker whether anything of the graph ran.
`saver_op_saved_model` holds instead a signature that calls one of the
saver's own checkpoint ops (SaveV2 writing a checkpoint at `marker`, or
RestoreV2 reading one).
"""

import json
import os

import tensorflow as tf

from tfdiffusion import export

IMAGE_SHAPE = (8, 8, 3)
NUM_CLASSES = 3


def _generate_specs():
    return [tf.TensorSpec([], tf.int64, name="seed"), tf.TensorSpec([], tf.int32, name="num_steps"),
            tf.TensorSpec([None], tf.int32, name="labels"), tf.TensorSpec([], tf.float32, name="guidance_scale"),
            tf.TensorSpec([], tf.float32, name="eta")]


def _images(labels):
    return tf.zeros(tf.concat([tf.shape(labels), IMAGE_SHAPE], 0), tf.uint8)


def _write_description(version_dir):
    """tfdiffusion's description of an export, as `export_saved_model` writes it."""
    description = dict(format=export.METADATA_FORMAT, format_version=1, tfdiffusion_version=None,
                       image_shape=list(IMAGE_SHAPE), num_classes=NUM_CLASSES, null_label=NUM_CLASSES,
                       num_timesteps=20, max_images=4, default_sampler="ddim",
                       samplers={"ddim": dict(signature="generate_ddim", options={"eta": 0.0}, min_steps=1)},
                       spacing="leading", clip_denoised=True, threshold=None, jit_compile=False,
                       model_mean_type="epsilon", model_var_type="fixed_small", label_dropout=0.1)
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(version_dir, export.METADATA_FILE), "w") as file:
        json.dump(description, file)


class _WritesOnLoad(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer, run by `tf.saved_model.load`, writes a file."""

    def __init__(self, marker):
        self._marker = marker
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.int32, shape=[], shared_name="")

    def _initialize(self):
        return tf.io.write_file(self._marker, "written when the SavedModel was loaded")


class _Hostile(tf.Module):
    def __init__(self, marker, secret):
        super().__init__()
        self.on_load = _WritesOnLoad(marker)
        self.weights = tf.Variable(tf.zeros([4]))  # the saver then has SaveV2/RestoreV2 work to do
        self._marker, self._secret = marker, secret

    @tf.function(input_signature=_generate_specs(), autograph=False)
    def generate_ddim(self, seed, num_steps, labels, guidance_scale, eta):
        def leak():
            contents = tf.io.read_file(self._secret)
            with tf.control_dependencies([tf.io.write_file(self._marker, contents)]):
                return tf.identity(seed)

        done = tf.cond(num_steps > 0, leak, lambda: tf.identity(seed))
        with tf.control_dependencies([done, self.on_load.resource_handle]):
            return {"images": _images(labels) + tf.cast(tf.reduce_sum(self.weights), tf.uint8)}


def hostile_saved_model(model_dir, marker, secret):
    """Writes version 1 of the hostile model into `model_dir`; returns its version directory."""
    version_dir = os.path.join(os.fspath(model_dir), "1")
    module = _Hostile(os.fspath(marker), os.fspath(secret))
    tf.saved_model.save(module, version_dir, signatures={"generate_ddim": module.generate_ddim,
                                                         "serving_default": module.generate_ddim})
    _write_description(version_dir)
    return version_dir


class _CallsSaverOp(tf.Module):
    def __init__(self, op, marker):
        super().__init__()
        self.weights = tf.Variable(tf.ones([4]))
        self._op, self._marker = op, marker

    @tf.function(input_signature=_generate_specs(), autograph=False)
    def generate_ddim(self, seed, num_steps, labels, guidance_scale, eta):
        if self._op == "SaveV2":
            done = tf.raw_ops.SaveV2(prefix=self._marker, tensor_names=["weights"], shape_and_slices=[""],
                                     tensors=[self.weights.read_value()])
        else:
            done = tf.raw_ops.RestoreV2(prefix=self._marker, tensor_names=["weights"], shape_and_slices=[""],
                                        dtypes=[tf.float32])[0]
        with tf.control_dependencies([done]):
            return {"images": _images(labels)}


def saver_op_saved_model(model_dir, op, marker):
    """A tfdiffusion-looking SavedModel whose `generate_ddim` calls the saver's `op` ("SaveV2" or "RestoreV2")
    on the checkpoint prefix `marker`; returns its version directory."""
    version_dir = os.path.join(os.fspath(model_dir), "1")
    module = _CallsSaverOp(op, os.fspath(marker))
    tf.saved_model.save(module, version_dir, signatures={"generate_ddim": module.generate_ddim})
    _write_description(version_dir)
    return version_dir
