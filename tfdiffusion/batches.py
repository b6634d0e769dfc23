"""The batches `DiffusionModel.fit` and `evaluate` take: Keras' (images, labels, sample_weight) order, static shapes.

A batch is `images`, `(images,)`, `(images, labels)` or `(images, labels,
sample_weight)`, in the order of `keras.utils.unpack_x_y_sample_weight`; an
unconditional network takes per-example weights as `(images, None,
sample_weight)` (a 2-tuple is always `(images, labels)`, so `(images,
sample_weight)` is refused rather than guessed). A data set whose element
spec does not know its shapes (`tf.data.Dataset.from_generator` without
output shapes) gets them from `with_static_shapes`, which checks every
batch as it comes.
"""

from typing import Any, Optional, Sequence, Tuple

import tensorflow as tf

__all__ = ["BATCH_FORMS", "split_batch", "unconditional_labels_message", "with_static_shapes"]

BATCH_FORMS = ("images, (images, labels) or (images, labels, sample_weight) (Keras' order; "
               "(images, None, sample_weight) for an unconditional network)")


def _none_if_absent(part: Any) -> Any:
    """None for a missing part of a batch or of an element spec (`None`, `tf.NoneTensorSpec()`)."""
    return None if part is None or isinstance(part, tf.NoneTensorSpec) else part


def split_batch(data: Any) -> Tuple[Any, Any, Any]:
    """`(images, labels, sample_weight)` of a batch or of an element spec, None where absent.

    Raises:
        ValueError: a tuple of more than 3 parts (or none).
    """
    if isinstance(data, list):
        data = tuple(data)
    if not isinstance(data, tuple):
        return data, None, None
    if not 1 <= len(data) <= 3:
        raise ValueError(f"A batch must be {BATCH_FORMS}. Received a tuple of {len(data)} parts")
    images, labels, sample_weight = data + (None,) * (3 - len(data))
    return images, _none_if_absent(labels), _none_if_absent(sample_weight)


def unconditional_labels_message(what: str) -> str:
    """The error for labels given to an unconditional network (a 2-tuple is (images, labels) for Keras)."""
    return (f"The network is unconditional (num_classes=None) but {what} yields labels: the second part "
            "of a batch is its labels in Keras' order (images, labels, sample_weight). Drop them (e.g. "
            "`with_labels=False`) or build a conditional network; to weight the examples of an "
            "unconditional model, give (images, None, sample_weight) batches, e.g. "
            "`ds.map(lambda x, w: (x, None, w))`.")


def _format(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("B" if i == 0 else str(d) for i, d in enumerate(shape)) + "]"


def _set_shape(part: tf.Tensor, shape: Sequence[Optional[int]], what: str, name: str) -> tf.Tensor:
    """`part` with the static `shape`, after an in-graph check that its batch has it."""
    actual = tf.shape(part)
    rank = len(shape)
    padded = tf.concat([actual, tf.zeros([rank], tf.int32)], 0)  # dims 1.. exist even for a lower rank
    fits = tf.equal(tf.size(actual), rank) & tf.reduce_all(tf.equal(padded[1:rank], tf.constant(shape[1:], tf.int32)))
    with tf.control_dependencies([tf.debugging.Assert(
            fits, [f"{what} must yield {name} of shape {_format(shape)}. Received a batch of shape", actual],
            summarize=16)]):
        return tf.ensure_shape(tf.identity(part), shape)


def _needs_shape(spec: Any, rank: int) -> bool:
    return isinstance(spec, tf.TensorSpec) and (
        spec.shape.rank is None or (rank > 1 and not spec.shape[1:].is_fully_defined()))


def with_static_shapes(dataset: tf.data.Dataset, image_shape: Sequence[int], what: str) -> tf.data.Dataset:
    """`dataset` with static shapes where its element spec lacks them; unchanged otherwise.

    Images get `[B, H, W, C]` (the model's), labels and sample weights
    `[B]`; the batch dimension stays as it is. Each batch is checked in the
    pipeline, so a batch of another shape stops `fit` with an error naming
    the shape expected and the one received.

    Args:
        dataset: batches in one of the `BATCH_FORMS`.
        image_shape: the model's `(H, W, C)`.
        what: how the message names the data set (e.g. "`validation_data`").
    """
    spec = dataset.element_spec
    parts = spec if isinstance(spec, tuple) else (spec,)
    if len(parts) > 3:
        return dataset  # refused with its message by the model's own checks
    shapes = [(None,) + tuple(image_shape), (None,), (None,)][:len(parts)]
    names = ["images", "labels", "sample weights"][:len(parts)]
    if not any(_needs_shape(part, len(shape)) for part, shape in zip(parts, shapes)):
        return dataset

    def set_shapes(*batch):
        fixed = tuple(_set_shape(part, shape, what, name) if _needs_shape(part_spec, len(shape)) else part
                      for part, part_spec, shape, name in zip(batch, parts, shapes, names))
        return fixed if isinstance(spec, tuple) else fixed[0]

    return dataset.map(set_shapes, num_parallel_calls=tf.data.AUTOTUNE)
