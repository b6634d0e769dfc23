"""Argument checks shared by every public constructor and function: integers, numbers, names, ranges.

Each check raises before any work with a message that names the argument,
says what was expected and what came (``"`num_steps` must be an integer in
[1, 1000]. Received: num_steps=0"``). Integers are never accepted as bools,
floats or strings, and numbers must be finite: nothing is coerced silently.
"""

import inspect
import math
import numbers
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_images",
    "check_int",
    "check_int_tuple",
    "check_number",
    "check_optional_int",
    "check_sample_weight",
    "check_seed",
    "check_timesteps",
    "is_int",
    "SEED_MIN",
    "SEED_MAX",
]

# Seeds are TensorFlow int64 scalars (stateless ops, tf.data, SavedModel inputs): the int64 range.
SEED_MIN = -(2 ** 63)
SEED_MAX = 2 ** 63 - 1


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (also 0-d integer arrays), never for bools."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _interval(minimum, maximum, closed_min=True, closed_max=True) -> str:
    if minimum is not None and maximum is not None:
        left, right = ("[" if closed_min else "("), ("]" if closed_max else ")")
        return f" in {left}{minimum}, {maximum}{right}"
    if minimum is not None:
        return f" {'>=' if closed_min else '>'} {minimum}"
    if maximum is not None:
        return f" {'<=' if closed_max else '<'} {maximum}"
    return ""


def check_int(name: str, value: Any, minimum: Optional[int] = 1, maximum: Optional[int] = None) -> int:
    """Returns `value` as an `int` if it is an integer in [minimum, maximum].

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        minimum: smallest allowed value (None: no lower bound); 1 by default.
        maximum: largest allowed value (None: no upper bound).

    Raises:
        TypeError: `value` is not an integer (a bool, float, string, ...).
        ValueError: `value` is outside the range.
    """
    expected = f"an integer{_interval(minimum, maximum)}"
    if not is_int(value):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r} "
                        f"of type {type(value).__name__}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return value


def check_optional_int(name: str, value: Any, minimum: Optional[int] = 1,
                       maximum: Optional[int] = None) -> Optional[int]:
    """`check_int`, letting None through."""
    return None if value is None else check_int(name, value, minimum, maximum)


def check_seed(name: str, value: Any, minimum: int = SEED_MIN, allow_none: bool = True) -> Optional[int]:
    """Returns a user's seed as a Python `int` (or None) if it fits TensorFlow's int64 seeds.

    The one check of every seed the package takes (the API's `seed=`
    arguments, the data loaders', the callbacks', the command's `--seed`):
    an integer (not a bool, float or string) in [minimum, 2**63 - 1].

    Args:
        name: the argument's name as the user wrote it (`seed`, `--seed`, ...).
        value: what the caller passed.
        minimum: smallest allowed seed; -2**63 by default (numpy-seeded
            generators take 0).
        allow_none: let None (a fresh random seed) through.

    Raises:
        TypeError: not an integer (or None where it is not allowed).
        ValueError: outside [minimum, 2**63 - 1].
    """
    if value is None and allow_none:
        return None
    low = "-2**63" if minimum == SEED_MIN else str(minimum)
    expected = f"an integer in [{low}, 2**63 - 1] (a seed is an int64)"
    if not is_int(value):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r} of type {type(value).__name__}")
    value = int(value)
    if not minimum <= value <= SEED_MAX:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value}")
    return value


def check_number(name: str, value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 *, min_inclusive: bool = True, max_inclusive: bool = True) -> float:
    """Returns `value` as a `float` if it is a finite real number in the given range.

    Integers are accepted (a float argument may be written `2`); bools,
    strings, NaN and infinities are not.

    Raises:
        TypeError: `value` is not a real number.
        ValueError: `value` is NaN, infinite or outside the range.
    """
    expected = f"a finite number{_interval(minimum, maximum, min_inclusive, max_inclusive)}"
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be {expected}. Received: {name}={value!r} "
                        f"of type {type(value).__name__}")
    value = float(value)
    below = minimum is not None and (value < minimum or (not min_inclusive and value == minimum))
    above = maximum is not None and (value > maximum or (not max_inclusive and value == maximum))
    if not math.isfinite(value) or below or above:
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Returns `value` if it is True or False (not 0, 1, or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def check_callable(name: str, value: Any, *arguments: Any, call: str = "", **keywords: Any) -> Callable:
    """Returns `value` if it is callable and its signature takes `arguments` (checked, not called).

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        *arguments: example positional arguments the callable will get.
        call: how it will be called, for the message (e.g. "progress(done, total)").
        **keywords: example keyword arguments it will get.

    Raises:
        TypeError: not callable, or its signature does not take `arguments`.
    """
    call = call or f"{name}(...)"
    if not callable(value):
        raise TypeError(f"`{name}` must be a callable, called as {call}. Received: {name}={value!r}")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins do not tell: they are called as they are
        return value
    try:
        signature.bind(*arguments, **keywords)
    except TypeError as error:
        raise TypeError(f"`{name}` must be a callable called as {call}; its signature {signature} does not "
                        f"take those arguments ({error}). Received: {name}={value!r}") from None
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Returns `value` if it is one of `choices` (the tuple that also drives dispatch)."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")
    return value


def check_int_tuple(name: str, values: Any, minimum: int = 1, allow_empty: bool = True) -> Tuple[int, ...]:
    """Returns `values` as a tuple of integers >= `minimum`."""
    try:
        items: Sequence = tuple(values)
    except TypeError:
        items = None
    if isinstance(values, str) or items is None or any(not is_int(v) or v < minimum for v in items) \
            or (not allow_empty and not items):
        what = "a non-empty" if not allow_empty else "a"
        raise ValueError(f"`{name}` must be {what} sequence of integers >= {minimum}. "
                         f"Received: {name}={values!r}")
    return tuple(int(v) for v in items)


# ------------------------------------------------------------------ tensors
def _static_values(tensor):
    """numpy values of an eager tensor (or array), None inside a graph."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if tf.executing_eagerly() and hasattr(tensor, "numpy"):
        return tensor.numpy()
    return None


def check_timesteps(t: Any, num_timesteps: int, batch: Optional[int] = None, name: str = "t",
                    validate: bool = True) -> tf.Tensor:
    """Checks timesteps: an integer vector `[B]` in [0, T); returns it as int32.

    The dtype is checked before any cast (floats and bools are refused); the
    range is checked at once for concrete values and, with `validate`, by
    in-graph asserts inside a `tf.function` (XLA drops those: a compiled
    caller checks its inputs before the compiled part).

    Raises:
        TypeError: not integers.
        ValueError: not a vector, a batch other than `batch`, or out of range.
    """
    if isinstance(t, (list, tuple)) and any(not is_int(v) for v in t):
        raise TypeError(f"`{name}` must be integer timesteps in [0, {num_timesteps}). Received: {name}={t!r}")
    t = tf.convert_to_tensor(t)
    if not t.dtype.is_integer:
        raise TypeError(f"`{name}` must be integer timesteps in [0, {num_timesteps}). "
                        f"Received dtype {t.dtype.name}")
    if t.shape.rank is not None and t.shape.rank != 1:
        raise ValueError(f"`{name}` must be a vector of timesteps, shape [B]. Received shape {t.shape}")
    if batch is not None and t.shape[0] is not None and t.shape[0] != batch:
        raise ValueError(f"`{name}` must have one timestep per example ({batch}). Received shape {t.shape}")
    values = _static_values(t)
    if values is not None and values.size and (values.min() < 0 or values.max() >= num_timesteps):
        raise ValueError(f"`{name}` must be in [0, {num_timesteps}) (T = {num_timesteps}). Received values "
                         f"from {values.min()} to {values.max()}")
    t = tf.cast(t, tf.int32)
    if values is None and validate:
        with tf.control_dependencies([tf.debugging.Assert(
                tf.reduce_all((t >= 0) & (t < num_timesteps)),
                [f"`{name}` must be in [0, {num_timesteps}). Received min, max:",
                 tf.reduce_min(t), tf.reduce_max(t)])]):
            t = tf.identity(t)
    return t


def check_images(x: Any, name: str = "x_start", validate: bool = True, limit: float = 1.0) -> tf.Tensor:
    """Checks float images (NaN-free, inside [-limit, limit]); returns them as float32.

    Integer images (uint8 [0, 255]) are refused with a hint, before any cast.
    With `validate` the values are checked: at once for concrete values, by
    in-graph asserts inside a `tf.function`.
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"`{name}` must be float images in [-{limit:g}, {limit:g}]. Received dtype "
                        f"{x.dtype.name}; scale uint8 images with x / 127.5 - 1")
    if not validate:
        return tf.cast(x, tf.float32)
    values = _static_values(x)
    if values is not None:
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`{name}` holds NaN or infinite values ({int(np.sum(~np.isfinite(values)))} of "
                             f"{values.size})")
        if values.size and np.abs(values).max() > limit * (1 + 1e-5):
            raise ValueError(f"`{name}` must lie in [-{limit:g}, {limit:g}]. Received values from "
                             f"{values.min():g} to {values.max():g}; scale [0, 255] images with "
                             "x / 127.5 - 1")
        return tf.cast(x, tf.float32)
    x = tf.cast(x, tf.float32)
    largest = tf.reduce_max(tf.abs(x))
    with tf.control_dependencies([tf.debugging.Assert(
            largest <= limit * (1 + 1e-5),  # False for NaN too
            [f"`{name}` must be finite and lie in [-{limit:g}, {limit:g}]. Received max |{name}|:",
             largest])]):
        return tf.identity(x)


def check_sample_weight(weights: Any, batch: Optional[int] = None, name: str = "sample_weight",
                        validate: bool = True) -> tf.Tensor:
    """Checks per-example weights: finite numbers >= 0, one per example; returns them as float32 `[B]`.

    A vector `[B]` or a column `[B, 1]` (as Keras takes them). The dtype and
    shape are checked before any cast (bools and strings are refused); the
    values at once for concrete values and, with `validate`, by in-graph
    asserts inside a `tf.function` (XLA drops those, as for `check_images`).

    Args:
        weights: the weights.
        batch: the batch size B they must match, when known.
        name: the argument's name, for the message.
        validate: check the values.

    Raises:
        TypeError: not numbers.
        ValueError: another shape, or a negative, NaN or infinite weight.
    """
    weights = tf.convert_to_tensor(weights)
    if weights.dtype == tf.bool or not (weights.dtype.is_floating or weights.dtype.is_integer):
        raise TypeError(f"`{name}` must be finite numbers >= 0, one per example. Received dtype {weights.dtype.name}")
    shape = weights.shape
    if shape.rank is not None and not (shape.rank == 1 or (shape.rank == 2 and shape[1] == 1)):
        raise ValueError(f"`{name}` must be a vector [B] (or [B, 1]) of one weight per example. "
                         f"Received shape {shape}")
    if batch is not None and shape.rank is not None and shape[0] is not None and shape[0] != batch:
        raise ValueError(f"`{name}` must hold one weight per example ({batch}). Received shape {shape}")
    weights = tf.cast(weights, tf.float32)
    values = _static_values(weights)
    if values is not None:
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise ValueError(f"`{name}` must be finite numbers >= 0. Received {int(bad.sum())} of {values.size} "
                             f"outside that (e.g. {values[bad].ravel()[0]:g})")
        return tf.reshape(weights, [-1])
    flat = tf.reshape(weights, [-1])
    if validate:
        with tf.control_dependencies([tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(flat) & (flat >= 0)),
                [f"`{name}` must be finite numbers >= 0. Received min, max:",
                 tf.reduce_min(flat), tf.reduce_max(flat)])]):
            flat = tf.identity(flat)
    return flat
