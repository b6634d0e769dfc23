"""Gradient checkpointing: a block's activations are recomputed in the backward pass instead of kept.

Training keeps every intermediate feature map of the forward pass until the
backward pass reads it. `recompute_in_backward(fn, *inputs)` keeps only the
inputs of `fn` (and its outputs, which the next block keeps anyway); its
gradient runs `fn` again on them under a tape. Memory for a block's
intermediates is traded for one more forward pass of the block (Chen et al.
2016, "Training Deep Nets with Sublinear Memory Cost").

A compiler that sees the same operations on the same inputs twice merges
them (XLA's common-subexpression elimination, Grappler's), which would undo
the recomputation. So the recomputation's inputs pass through a barrier tied
to the incoming gradient: XLA's optimization barrier in an XLA-compiled
function, control dependencies on the gradient in a TensorFlow graph, nothing
in eager mode (which runs the recomputation when the gradient is asked for).
"""

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

__all__ = ["recompute_in_backward"]


def _in_xla_function():
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def _held_until(inputs, upstream):
    """`inputs` and `upstream` as new tensors no compiler can compute before `upstream` exists."""
    if tf.executing_eagerly():
        return inputs, upstream
    if _in_xla_function():
        *held, upstream = xla.optimization_barrier(*inputs, upstream)
        return tuple(held), upstream
    with tf.control_dependencies([upstream]):
        return tuple(tf.identity(x) for x in inputs), upstream


def recompute_in_backward(fn, *inputs):
    """Calls `fn(*inputs)`; its gradient recomputes `fn` instead of keeping its activations.

    Args:
        fn: A function of tensors returning one tensor. It may read variables
            (their gradients are returned as usual) and must give the same
            result when called again on the same inputs: draw random numbers
            from a seed passed in as an input (stateless ops), not from a
            stateful generator.
        *inputs: Tensors. Float inputs get gradients; integer inputs (seeds)
            get none.

    Returns:
        `fn(*inputs)`.
    """
    inputs = tuple(tf.convert_to_tensor(x) for x in inputs)

    @tf.custom_gradient
    def run(*inputs):
        output = fn(*inputs)

        def gradient(upstream, variables=None):
            replay_inputs, upstream = _held_until(inputs, upstream)
            differentiable = [i for i, x in enumerate(replay_inputs) if x.dtype.is_floating]
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch([replay_inputs[i] for i in differentiable])
                replayed = fn(*replay_inputs)
            grads = tape.gradient(replayed, [replay_inputs[i] for i in differentiable] + variables,
                                  output_gradients=upstream)
            input_grads = [None] * len(inputs)
            for i, grad in zip(differentiable, grads):
                input_grads[i] = grad
            return input_grads, grads[len(differentiable):]

        return output, gradient

    return run(*inputs)
