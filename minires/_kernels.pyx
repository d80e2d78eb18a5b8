# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the hot loops of minires.

Each public function has a twin in ``_kernels_ref.py`` (the readable spec)
with the same signature and result. The pattern is the same everywhere:
a Python wrapper checks and allocates, then a ``nogil`` loop over typed
memoryviews does the work, ``prange`` splitting the (image, channel) pairs
across threads. Without OpenMP, ``prange`` runs serially and stays correct.
"""
import numpy as np
from cython cimport floating
from libc.string cimport memcpy
from cython.parallel cimport prange

from minires.parallel import default_threads

cdef int _num_threads = default_threads()


def set_num_threads(int n):
    """Threads used by every prange loop in this module (n >= 1)."""
    global _num_threads
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _num_threads = n


def get_num_threads():
    return _num_threads


def openmp_enabled():
    """True when this extension was compiled with OpenMP."""
    return bool(_OPENMP)


cdef extern from *:
    """
    #ifdef _OPENMP
    #define MINIRES_OPENMP 1
    #else
    #define MINIRES_OPENMP 0
    #endif
    """
    int _OPENMP "MINIRES_OPENMP"


cdef inline Py_ssize_t _out_size(Py_ssize_t size, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p) nogil:
    return (size + 2 * p - k) // s + 1


# ---------------------------------------------------------------- im2col
cdef inline Py_ssize_t _first_inside(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest output position o with o*stride + offset >= 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                   Py_ssize_t count) noexcept nogil:
    """One past the largest output position o < count with o*stride + offset < size."""
    cdef Py_ssize_t e
    if size - offset <= 0:
        return 0
    e = (size - offset - 1) // stride + 1
    return e if e < count else count


cdef void _im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, base, lo, hi
    cdef floating* dst
    cdef const floating* src
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                # Output columns [lo, hi) read inside the image; the rest read padding.
                lo = _first_inside(j - pw, sw)
                hi = _end_inside(j - pw, sw, W, OW)
                if lo > hi:
                    lo = hi
                for oh in range(OH):
                    dst = &cols[row, n * P + oh * OW]
                    hh = oh * sh - ph + i
                    if hh < 0 or hh >= H:
                        for ow in range(OW):
                            dst[ow] = 0
                        continue
                    # Branch-free middle; zeros only where the window hangs over the padding.
                    for ow in range(lo):
                        dst[ow] = 0
                    base = j - pw
                    src = &x[n, c, hh, 0]
                    if sw == 1:         # a contiguous run: one memcpy
                        if hi > lo:
                            memcpy(&dst[lo], &src[lo + base], (hi - lo) * sizeof(floating))
                    else:
                        for ow in range(lo, hi):
                            dst[ow] = src[ow * sw + base]
                    for ow in range(hi, OW):
                        dst[ow] = 0


def im2col(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw, int threads=0):
    """x: (N, C, H, W) -> cols: (C*KH*KW, N*OH*OW). See _kernels_ref.im2col.

    threads: OpenMP threads for this call (0: the module setting). The loop
    runs without the GIL, so Python threads can run it side by side.
    """
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    cols = np.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    cdef int nt = threads or _num_threads
    cdef float[:, :, :, ::1] xf
    cdef float[:, ::1] cf
    cdef double[:, :, :, ::1] xd
    cdef double[:, ::1] cd
    if x.dtype == np.float32:
        xf, cf = x, cols
        with nogil:
            _im2col[float](xf, cf, kh, kw, sh, sw, ph, pw, nt)
    else:
        xd, cd = x, cols
        with nogil:
            _im2col[double](xd, cd, kh, kw, sh, sw, ph, pw, nt)
    return cols


# ---------------------------------------------------------------- col2im
cdef void _col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, base, lo, hi
    cdef const floating* src
    cdef floating* dst
    # Each thread owns whole (n, c) planes of x, so the += never races.
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                # Output columns [lo, hi) read inside the image; the rest read padding.
                lo = _first_inside(j - pw, sw)
                hi = _end_inside(j - pw, sw, W, OW)
                if lo > hi:
                    lo = hi
                base = j - pw
                for oh in range(OH):
                    hh = oh * sh - ph + i
                    if hh < 0 or hh >= H:
                        continue
                    src = &cols[row, n * P + oh * OW]
                    dst = &x[n, c, hh, 0]
                    for ow in range(lo, hi):
                        dst[ow * sw + base] += src[ow]


def col2im(cols, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w, Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, int threads=0):
    """cols: (C*KH*KW, N*OH*OW) -> x: (N, C, H, W). See _kernels_ref.col2im.
    threads: as for im2col."""
    cols = np.ascontiguousarray(cols)
    n = cols.shape[1] // (_out_size(h, kh, sh, ph) * _out_size(w, kw, sw, pw))
    x = np.zeros((n, c, h, w), dtype=cols.dtype)
    cdef int nt = threads or _num_threads
    cdef float[:, ::1] cf
    cdef float[:, :, :, ::1] xf
    cdef double[:, ::1] cd
    cdef double[:, :, :, ::1] xd
    if cols.dtype == np.float32:
        cf, xf = cols, x
        with nogil:
            _col2im[float](cf, xf, kh, kw, sh, sw, ph, pw, nt)
    else:
        cd, xd = cols, x
        with nogil:
            _col2im[double](cd, xd, kh, kw, sh, sw, ph, pw, nt)
    return x


# ---------------------------------------------------------------- max pool
cdef void _max_pool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                            long long[:, :, :, ::1] argmax,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t nc, n, c, i, j, oh, ow, hh, ww, best_k
    cdef floating best, v
    cdef bint found
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                found = False
                best = 0
                best_k = 0
                for i in range(kh):
                    hh = oh * sh - ph + i
                    if hh < 0 or hh >= H:
                        continue
                    for j in range(kw):
                        ww = ow * sw - pw + j
                        if ww < 0 or ww >= W:
                            continue
                        v = x[n, c, hh, ww]
                        # Strict > keeps the first maximum, like the reference.
                        if not found or v > best:
                            best = v
                            best_k = i * kw + j
                            found = True
                out[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_k


def max_pool_forward(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ph, Py_ssize_t pw):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, OH, OW). See the reference."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    if x.dtype == np.float32:
        _max_pool_forward[float](x, out, argmax, kh, kw, sh, sw, ph, pw, _num_threads)
    else:
        _max_pool_forward[double](x, out, argmax, kh, kw, sh, sw, ph, pw, _num_threads)
    return out, argmax


cdef void _max_pool_backward(const floating[:, :, :, ::1] dout, const long long[:, :, :, ::1] argmax,
                             floating[:, :, :, ::1] dx,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t C = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t nc, n, c, oh, ow, k
    for nc in prange(dout.shape[0] * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                k = argmax[n, c, oh, ow]
                dx[n, c, oh * sh - ph + k // kw, ow * sw - pw + k % kw] += dout[n, c, oh, ow]


def max_pool_backward(dout, argmax, Py_ssize_t h, Py_ssize_t w, Py_ssize_t kh, Py_ssize_t kw,
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """dout, argmax: (N, C, OH, OW) -> dx: (N, C, H, W). See the reference."""
    dout = np.ascontiguousarray(dout)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    dx = np.zeros((dout.shape[0], dout.shape[1], h, w), dtype=dout.dtype)
    if dout.dtype == np.float32:
        _max_pool_backward[float](dout, argmax, dx, kh, kw, sh, sw, ph, pw, _num_threads)
    else:
        _max_pool_backward[double](dout, argmax, dx, kh, kw, sh, sw, ph, pw, _num_threads)
    return dx


# ---------------------------------------------------------------- batchnorm
# Per channel c over its M = N*H*W values. Forward caches only mean and rstd
# (llm.c's layernorm does the same): xhat is cheap to recompute in backward.
cdef void _bn_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
                    int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, p
    cdef double s, d, m
    for c in prange(C, num_threads=nthreads, schedule="static"):
        s = 0
        for n in range(N):
            for p in range(P):
                s = s + x[n, c, p]
        m = s / (N * P)
        s = 0
        for n in range(N):        # two passes: exact even when |mean| >> std
            for p in range(P):
                d = x[n, c, p] - m
                s = s + d * d
        mean[c] = m
        var[c] = s / (N * P)


cdef void _bn_apply(const floating[:, :, ::1] x, floating[:, :, ::1] out, const double[::1] mean,
                    const double[::1] rstd, const floating[::1] gamma, const floating[::1] beta,
                    int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, p
    cdef floating scale, shift
    for c in prange(C, num_threads=nthreads, schedule="static"):
        scale = <floating>(gamma[c] * rstd[c])
        shift = <floating>(beta[c] - mean[c] * gamma[c] * rstd[c])
        for n in range(N):
            for p in range(P):
                out[n, c, p] = x[n, c, p] * scale + shift


def batchnorm_forward(x, gamma, beta, running_mean, running_var, bint training, double eps):
    """x: (N, C, H, W) -> (out, mean (C,), var (C,)); mean and var are float64.

    training: batch statistics (biased variance); otherwise the running ones.
    The running statistics are not updated here (the caller does it).
    """
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    if training:
        mean = np.empty(c)
        var = np.empty(c)
        if x.dtype == np.float32:
            _bn_stats[float](x3, mean, var, _num_threads)
        else:
            _bn_stats[double](x3, mean, var, _num_threads)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    rstd = 1.0 / np.sqrt(var + eps)
    out = np.empty_like(x)
    g = np.ascontiguousarray(gamma, dtype=x.dtype)
    b = np.ascontiguousarray(beta, dtype=x.dtype)
    if x.dtype == np.float32:
        _bn_apply[float](x3, out.reshape(n, c, -1), mean, rstd, g, b, _num_threads)
    else:
        _bn_apply[double](x3, out.reshape(n, c, -1), mean, rstd, g, b, _num_threads)
    return out, mean, var


cdef void _bn_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                       floating[:, :, ::1] dx, const double[::1] mean, const double[::1] rstd,
                       const floating[::1] gamma, double[::1] dgamma, double[::1] dbeta,
                       bint training, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, p
    cdef double sd, sdx, xh, k1, k2, g, m, r, M = N * P
    for c in prange(C, num_threads=nthreads, schedule="static"):
        m = mean[c]
        r = rstd[c]
        g = gamma[c]
        sd = 0
        sdx = 0
        for n in range(N):
            for p in range(P):
                sd = sd + dout[n, c, p]
                sdx = sdx + dout[n, c, p] * (x[n, c, p] - m) * r
        dbeta[c] = sd
        dgamma[c] = sdx
        # dx = g*r*(dout - mean(dout) - xhat*mean(dout*xhat)) in training, g*r*dout in eval
        k1 = sd / M if training else 0.0
        k2 = sdx / M if training else 0.0
        for n in range(N):
            for p in range(P):
                xh = (x[n, c, p] - m) * r
                dx[n, c, p] = <floating>(g * r * (dout[n, c, p] - k1 - xh * k2))


def batchnorm_backward(dout, x, mean, rstd, gamma, bint training):
    """-> dx (N, C, H, W), dgamma (C,), dbeta (C,) in x's dtype."""
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    n, c = x.shape[0], x.shape[1]
    dx = np.empty_like(x)
    dgamma, dbeta = np.empty(c), np.empty(c)
    g = np.ascontiguousarray(gamma, dtype=x.dtype)
    if x.dtype == np.float32:
        _bn_backward[float](dout.reshape(n, c, -1), x.reshape(n, c, -1), dx.reshape(n, c, -1),
                            mean, rstd, g, dgamma, dbeta, training, _num_threads)
    else:
        _bn_backward[double](dout.reshape(n, c, -1), x.reshape(n, c, -1), dx.reshape(n, c, -1),
                             mean, rstd, g, dgamma, dbeta, training, _num_threads)
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# ---------------------------------------------------------------- relu
cdef void _relu_forward(const floating[::1] x, floating[::1] out, int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(x.shape[0], num_threads=nthreads, schedule="static"):
        out[i] = x[i] if x[i] > 0 else 0


cdef void _relu_backward(const floating[::1] dout, const floating[::1] out, floating[::1] dx,
                         int nthreads) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(dout.shape[0], num_threads=nthreads, schedule="static"):
        dx[i] = dout[i] if out[i] > 0 else 0


def relu_forward(x):
    """max(x, 0), any shape, in one parallel pass."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    if x.dtype == np.float32:
        _relu_forward[float](x.reshape(-1), out.reshape(-1), _num_threads)
    else:
        _relu_forward[double](x.reshape(-1), out.reshape(-1), _num_threads)
    return out


def relu_backward(dout, out):
    """dout where out > 0, else 0; a new array (dout is never written)."""
    dout = np.ascontiguousarray(dout, dtype=out.dtype)
    dx = np.empty_like(out)
    if out.dtype == np.float32:
        _relu_backward[float](dout.reshape(-1), out.reshape(-1), dx.reshape(-1), _num_threads)
    else:
        _relu_backward[double](dout.reshape(-1), out.reshape(-1), dx.reshape(-1), _num_threads)
    return dx
