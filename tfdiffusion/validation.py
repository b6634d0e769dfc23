"""Argument checks shared by every public constructor and function: integers, numbers, names, ranges.

Each check raises before any work with a message that names the argument,
says what was expected and what came (``"`num_steps` must be an integer in
[1, 1000]. Received: num_steps=0"``). Integers are never accepted as bools,
floats or strings, and numbers must be finite: nothing is coerced silently.
"""

import math
import numbers
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_tuple",
    "check_number",
    "check_optional_int",
    "is_int",
]


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
