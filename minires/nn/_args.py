"""Constructor argument checks for the modules.

A layer built with 0 channels or a negative padding should fail where it is
built, with the argument's name, not at its first forward deep inside a
model (or, worse, run with an empty weight).
"""
import numbers

from ..functional._checks import pair


def count(value, name, low=1):
    """An integer >= low (channels, features) -> int; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def window(kernel_size, stride, padding):
    """kernel_size >= 1, stride >= 1, padding >= 0, each an int or a pair -> three pairs."""
    kernel = pair(kernel_size, "kernel_size")
    stride = pair(stride, "stride")
    padding = pair(padding, "padding")
    for name, value, low in (("kernel_size", kernel, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if min(value) < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    return kernel, stride, padding


def real(value, name, low, high=None, open_high=False):
    """A real number (Python or NumPy, not a bool) in [low, high] (or [low, high)) -> float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    above = value >= low
    below = high is None or (value < high if open_high else value <= high)
    if not (above and below):          # also refuses NaN: every comparison is False
        upper = "inf)" if high is None else f"{high}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be in [{low}, {upper}, got {value!r}")
    return float(value)
