# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the hot loops of minires.

Each public function has a twin in ``_kernels_ref.py`` (the readable spec)
with the same signature and result. The pattern is the same everywhere:
a Python wrapper checks and allocates, then a ``nogil`` loop over typed
memoryviews does the work, ``prange`` splitting the (image, channel) pairs
across threads. Without OpenMP, ``prange`` runs serially and stays correct.
"""
import os

import numpy as np
from cython cimport floating
from cython.parallel cimport prange

cdef int _num_threads = max(1, min(os.cpu_count() or 1, 64))


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
cdef void _im2col(const floating[:, :, :, ::1] x, floating[:, :, ::1] cols,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, ww
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oh in range(OH):
                    hh = oh * sh - ph + i
                    if hh < 0 or hh >= H:
                        for ow in range(OW):
                            cols[n, row, oh * OW + ow] = 0
                        continue
                    for ow in range(OW):
                        ww = ow * sw - pw + j
                        if ww < 0 or ww >= W:
                            cols[n, row, oh * OW + ow] = 0
                        else:
                            cols[n, row, oh * OW + ow] = x[n, c, hh, ww]


def im2col(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw):
    """x: (N, C, H, W) -> cols: (N, C*KH*KW, OH*OW). See _kernels_ref.im2col."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    cols = np.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    if x.dtype == np.float32:
        _im2col[float](x, cols, kh, kw, sh, sw, ph, pw, _num_threads)
    else:
        _im2col[double](x, cols, kh, kw, sh, sw, ph, pw, _num_threads)
    return cols


# ---------------------------------------------------------------- col2im
cdef void _col2im(const floating[:, :, ::1] cols, floating[:, :, :, ::1] x,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, int nthreads) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, ww
    # Each thread owns whole (n, c) planes of x, so the += never races.
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oh in range(OH):
                    hh = oh * sh - ph + i
                    if hh < 0 or hh >= H:
                        continue
                    for ow in range(OW):
                        ww = ow * sw - pw + j
                        if ww >= 0 and ww < W:
                            x[n, c, hh, ww] += cols[n, row, oh * OW + ow]


def col2im(cols, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w, Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """cols: (N, C*KH*KW, OH*OW) -> x: (N, C, H, W). See _kernels_ref.col2im."""
    cols = np.ascontiguousarray(cols)
    x = np.zeros((cols.shape[0], c, h, w), dtype=cols.dtype)
    if cols.dtype == np.float32:
        _col2im[float](cols, x, kh, kw, sh, sw, ph, pw, _num_threads)
    else:
        _col2im[double](cols, x, kh, kw, sh, sw, ph, pw, _num_threads)
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
