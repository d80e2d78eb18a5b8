# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the hot loops of minires.

Each public function has a twin in ``_kernels_ref.py`` (the readable spec)
with the same signature and result. The pattern is the same everywhere:
a Python wrapper allocates the result and makes its inputs C-contiguous,
then a loop function over typed memoryviews does the work without the GIL,
``prange`` splitting the (image, channel) pairs across threads. Loop
functions take fused ``floating`` memoryviews, so Cython picks the float
or the double version from the arrays passed; inputs are ``const``, so
read-only arrays are accepted. Without OpenMP, ``prange`` runs serially
and stays correct. NaN and inf propagate as in PyTorch: a ReLU is written
"0 if v <= 0 else v" (false for NaN, so NaN passes), and a NaN wins its
max-pooling window.
"""
import functools
import math

import numpy as np
from cython cimport floating
from libc.string cimport memcpy, memset
from cython.parallel cimport parallel, prange, threadid

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


# Waking the OpenMP threads for a parallel loop costs tens of microseconds
# (they sleep between loops: OMP_WAIT_POLICY=PASSIVE, see minires.runtime),
# more than a ReLU over 16k values takes on one core; one image's layers
# are that small. Below this many values a loop runs on the calling thread
# (PyTorch's at::parallel_for uses the same grain, 32768). Folded seed-cnn
# on one image, AMD EPYC (Zen 4): 2.57 ms with every loop on two threads,
# 0.88 ms with this grain.
GRAIN = 32768


def _threads(Py_ssize_t values):
    """Threads for a loop over this many values: 1 below GRAIN, else the module's setting."""
    return 1 if values < GRAIN else _num_threads


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
cdef inline Py_ssize_t _first_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t end) noexcept nogil:
    """Smallest output position o with o*stride + offset >= 0, at most end."""
    cdef Py_ssize_t o = 0 if offset >= 0 else (-offset + stride - 1) // stride
    return o if o < end else end


cdef inline Py_ssize_t _end_inside(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                                   Py_ssize_t count) noexcept nogil:
    """One past the largest output position o < count with o*stride + offset < size."""
    cdef Py_ssize_t e
    if size - offset <= 0:
        return 0
    e = (size - offset - 1) // stride + 1
    return e if e < count else count


def _im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,
            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
            Py_ssize_t ph, Py_ssize_t pw, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, base, lo, hi
    cdef floating* dst
    cdef const floating* src
    with nogil:
        for nc in prange(N * C, num_threads=nthreads, schedule="static"):
            n = nc // C
            c = nc % C
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    # Output columns [lo, hi) read inside the image; the rest read padding.
                    hi = _end_inside(j - pw, sw, W, OW)
                    lo = _first_inside(j - pw, sw, hi)
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
    _im2col(x, cols, kh, kw, sh, sw, ph, pw, threads or _threads(cols.size))
    return cols


# ---------------------------------------------------------------- col2im
def _col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x,
            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
            Py_ssize_t ph, Py_ssize_t pw, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = _out_size(H, kh, sh, ph), OW = _out_size(W, kw, sw, pw)
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t nc, n, c, i, j, row, oh, ow, hh, base, lo, hi
    cdef const floating* src
    cdef floating* dst
    with nogil:
        # Each thread owns whole (n, c) planes of x, so the += never races.
        for nc in prange(N * C, num_threads=nthreads, schedule="static"):
            n = nc // C
            c = nc % C
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    # Output columns [lo, hi) read inside the image; the rest read padding.
                    hi = _end_inside(j - pw, sw, W, OW)
                    lo = _first_inside(j - pw, sw, hi)
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
    _col2im(cols, x, kh, kw, sh, sw, ph, pw, threads or _threads(cols.size))
    return x


# ---------------------------------------------------------------- direct convolution
# A convolution without im2col. Images are copied once into a zero-bordered
# plane per channel, of row pitch WQ, and flattened. On that flat "padded
# grid" a window tap (i, j) is a plain shift by i*WQ + j:
#     opg[f, p] = sum over c, i, j of w[f, c, i, j] * xpad[c, p + i*WQ + j]
# where p = oh*WQ + ow. Columns ow >= OW of opg are junk (their windows wrap
# into the next row) and are dropped when copying out. Every read is
# contiguous, so the compiler vectorises the p loop, and a tile of FB output
# channels x PB positions stays in vector registers across the whole sum.
# Stride 1: one zero column serves as the right border of a row and the left
# border of the next (WQ = W + PW), and the images of a tile sit one below
# the other, sharing their border rows, so that small maps fill a grid of
# about 512 positions (fewer: the tile leaves the L2 cache for wide layers;
# more: rounding to PB wastes work). The junk then costs 3% at 32x32, 12% at
# 16x16 and 25% at 8x8 (50% with one image and full borders); im2col's copy
# of every input KH*KW times costs more.
# Stride S: the padded image is split into S*S phase planes, plane (a, b)
# holding the pixels at rows = a and columns = b (mod S), each WQ = ceil(WP/S)
# wide. Tap (i, j) then reads plane (i % S, j % S) shifted by (i//S)*WQ + j//S,
# contiguous again; the tap table `offsets` hides the difference, so one
# kernel serves every stride.
# Weight gradients use the same shifts: dw[f, c, i, j] = sum over p of
# dpg[f, p] * plane[p + shift], with dpg (dout on the grid) zero in the junk.
#
# The register tiles are sized to the CPU's vector registers, which the
# compiler sees as the target's macros: a tile's float32 accumulators fill
# about half of them, leaving room for the values they are multiplied with.
# AVX-512 has 32 registers of 16 floats: 8 x 32 accumulators (16 registers).
# AVX2 has 16 of 8 floats: there the same tile spilled to memory at every
# step (AMD Zen 3, 2 threads: a resnet-20 training step 1.85x PyTorch's, its
# weight gradient 9x slower than on Zen 4), so 4 x 24 and 6 x 16 (12
# registers). SSE (the portable baseline) has 16 of 4 floats: 4 x 8, 6 x 8.
# PB and VL stay multiples of 8, the vectors of the tiles written in C.
cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define MINIRES_WIDE_TILES 1
    enum { MINIRES_FB = 8, MINIRES_PB = 32, MINIRES_KB = 8, MINIRES_VL = 32 };
    #elif defined(__AVX__)
    #define MINIRES_WIDE_TILES 0
    enum { MINIRES_FB = 4, MINIRES_PB = 24, MINIRES_KB = 6, MINIRES_VL = 16 };
    #else
    #define MINIRES_WIDE_TILES 0
    enum { MINIRES_FB = 4, MINIRES_PB = 8, MINIRES_KB = 6, MINIRES_VL = 8 };
    #endif
    """
    enum:
        FB "MINIRES_FB"     # output channels per register tile (forward)
        PB "MINIRES_PB"     # padded-grid positions per register tile (forward)
        KB "MINIRES_KB"     # taps (c, i, j) per weight-gradient tile
        VL "MINIRES_VL"     # output channels per weight-gradient tile
    int WIDE_TILES "MINIRES_WIDE_TILES"     # the AVX-512 tiles: KB, VL = 8, 32, and the narrow tile below


cdef enum:
    NARROW = 16 # taps and output channels per narrow weight-gradient tile (AVX-512, float32, F <= 16)


def tile_sizes():
    """The register tiles this build uses: {"FB": .., "PB": .., "KB": .., "VL": ..,
    "matmul_shares_rows": whether matmul runs its own blocks (AVX and AVX-512 builds)}."""
    return dict(FB=FB, PB=PB, KB=KB, VL=VL, matmul_shares_rows=bool(MM_BLOCKS))


if WIDE_TILES and (KB, VL) != (8, 32):       # the literal steps of _conv_direct_weight's tile loops
    raise ImportError(f"minires._kernels: KB, VL = {KB}, {VL} but the weight-gradient loops step by 8, 32")
if not WIDE_TILES and (PB % 8 or VL % 8):      # the C tiles' vectors of 8
    raise ImportError(f"minires._kernels: PB, VL = {PB}, {VL} must be multiples of 8")


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


# The tiles of the narrower vectors (AVX2 and SSE builds) are written in C
# with GCC/Clang vector types of 8 floats: as Cython loops, GCC vectorised
# the 16-channel weight-gradient tile across the taps with shuffles instead
# of along the channels (the narrow AVX-512 tile below had the same
# trouble), and that kernel took 2.4x the forward's time on AMD Zen 3 (181
# against 68 ms in a resnet-20 step; 62 ms in C). The forward kernel took 68
# ms as a Cython loop, 58 in C (one benchmark run each, `minires bench`).
# The weight tile adds its sums into dwt as vectors: added one by one, they
# cost Winograd's weight gradient, whose tiles run over a block's 64 to 256
# tiles, a quarter of its time (0.72-0.82 of it at 32 to 256 channels; the
# direct kernel's, over whole images, 0.97; one thread, AMD Zen 3).
cdef extern from *:
    """
    #if defined(__GNUC__) && !MINIRES_WIDE_TILES
    #define MINIRES_V8_TILES 1
    typedef float minires_v8f __attribute__((vector_size(32), aligned(4)));
    /* opg[f0:f0+FB, p0:p0+PB] = sum over k < K of wt[f0/FB, k, f - f0] * xpad[offsets[k] + p] */
    static inline void minires_forward_tile_v8(const float* xpad, const float* wt, float* opg,
                                               const Py_ssize_t* offsets, Py_ssize_t K, Py_ssize_t P,
                                               Py_ssize_t f0, Py_ssize_t p0) {
        enum { V = MINIRES_PB / 8 };
        minires_v8f acc[MINIRES_FB][V];
        for (int a = 0; a < MINIRES_FB; a++)
            for (int j = 0; j < V; j++) acc[a][j] = (minires_v8f){0};
        for (Py_ssize_t k = 0; k < K; k++) {
            const float* xr = xpad + offsets[k] + p0;
            const float* wr = wt + (f0 * K + k * MINIRES_FB);
            minires_v8f xv[V];
            for (int j = 0; j < V; j++) xv[j] = *(const minires_v8f*)(xr + 8 * j);
            for (int a = 0; a < MINIRES_FB; a++)
                for (int j = 0; j < V; j++) acc[a][j] += wr[a] * xv[j];
        }
        for (int a = 0; a < MINIRES_FB; a++)
            for (int j = 0; j < V; j++) *(minires_v8f*)(opg + (f0 + a) * P + p0 + 8 * j) = acc[a][j];
    }
    /* dwt[k0+a, f0+q] += sum over p < P of planes[offsets[k0+a] + p] * dT[p, f0+q], a < KB, q < VL */
    static inline void minires_weight_tile_v8(const float* planes, const float* dT, float* dwt,
                                              const Py_ssize_t* offsets, Py_ssize_t P, Py_ssize_t FP,
                                              Py_ssize_t k0, Py_ssize_t f0) {
        enum { V = MINIRES_VL / 8 };
        const float* rows[MINIRES_KB];
        minires_v8f acc[MINIRES_KB][V];
        for (int a = 0; a < MINIRES_KB; a++) {
            rows[a] = planes + offsets[k0 + a];
            for (int j = 0; j < V; j++) acc[a][j] = (minires_v8f){0};
        }
        for (Py_ssize_t p = 0; p < P; p++) {
            minires_v8f d[V];                 /* dout's VL channels at position p */
            for (int j = 0; j < V; j++) d[j] = *(const minires_v8f*)(dT + p * FP + f0 + 8 * j);
            for (int a = 0; a < MINIRES_KB; a++) {
                float xv = rows[a][p];
                for (int j = 0; j < V; j++) acc[a][j] += xv * d[j];
            }
        }
        for (int a = 0; a < MINIRES_KB; a++)
            for (int j = 0; j < V; j++) *(minires_v8f*)(dwt + (k0 + a) * FP + f0 + 8 * j) += acc[a][j];
    }
    #else
    #define MINIRES_V8_TILES 0      /* AVX-512: the Cython loops below; these are never called */
    static inline void minires_forward_tile_v8(const float* xpad, const float* wt, float* opg,
                                               const Py_ssize_t* offsets, Py_ssize_t K, Py_ssize_t P,
                                               Py_ssize_t f0, Py_ssize_t p0) {}
    static inline void minires_weight_tile_v8(const float* planes, const float* dT, float* dwt,
                                              const Py_ssize_t* offsets, Py_ssize_t P, Py_ssize_t FP,
                                              Py_ssize_t k0, Py_ssize_t f0) {}
    #endif
    """
    int V8_TILES "MINIRES_V8_TILES"
    void _forward_tile_v8 "minires_forward_tile_v8"(const float* xpad, const float* wt, float* opg,
                                                    const Py_ssize_t* offsets, Py_ssize_t K, Py_ssize_t P,
                                                    Py_ssize_t f0, Py_ssize_t p0) noexcept nogil
    void _weight_tile_v8 "minires_weight_tile_v8"(const float* planes, const float* dT, float* dwt,
                                                  const Py_ssize_t* offsets, Py_ssize_t P, Py_ssize_t FP,
                                                  Py_ssize_t k0, Py_ssize_t f0) noexcept nogil


cdef void _forward_tile(const floating* xpad, const floating* wt, floating* opg,
                        const Py_ssize_t* offsets, Py_ssize_t K, Py_ssize_t P,
                        Py_ssize_t f0, Py_ssize_t p0) noexcept nogil:
    """opg[f0:f0+FB, p0:p0+PB] = sum over k < K of wt[f0/FB, k, f - f0] * xpad[offsets[k] + p]."""
    cdef floating acc[FB][PB]
    cdef Py_ssize_t a, q, k
    cdef const floating* xr
    cdef const floating* wr
    if floating is float:
        if V8_TILES:
            _forward_tile_v8(xpad, wt, opg, offsets, K, P, f0, p0)
            return
    for a in range(FB):
        for q in range(PB):
            acc[a][q] = 0
    for k in range(K):
        xr = xpad + offsets[k] + p0
        wr = wt + (f0 * K + k * FB)
        for a in range(FB):
            for q in range(PB):
                acc[a][q] += wr[a] * xr[q]
    for a in range(FB):
        for q in range(PB):
            opg[(f0 + a) * P + p0 + q] = acc[a][q]


cdef void _load_images(const floating[:, :, :, ::1] x, Py_ssize_t n0, Py_ssize_t count,
                       floating[:, ::1] planes, Py_ssize_t T, Py_ssize_t HS, Py_ssize_t WQ,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Channels c0 <= c < c1 of images x[n0:n0+count] into the planes.
    Stride 1: image t's row h goes to plane row ph + t*HS + h, from column
    pw, and every other value of the plane is written 0 in the same pass
    (the padding, and slots t >= count of a partial last tile), so the
    planes need no zeroing beforehand.
    Stride S (T = 1): the phase planes of image n0; only interiors are
    written, so the borders stay zero from allocation. (Zeroing whole
    stride-1 planes first took 4.3% of the samples of one-image 16->16 convs
    at 32x32 on two threads; these memsets take 1.2%: perf, AMD Zen 3.)"""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3], L = planes.shape[1]
    cdef Py_ssize_t t, c, h, b, w0, k, count_b, row, phase_row, col, start, done
    cdef floating* dst
    cdef const floating* src
    if sh == 1 and sw == 1:
        for c in range(c0, c1):
            dst = &planes[c, 0]
            done = 0                # dst[:done] is written
            for t in range(count):
                for h in range(H):
                    start = (ph + t * HS + h) * WQ + pw
                    memset(dst + done, 0, (start - done) * sizeof(floating))
                    memcpy(dst + start, &x[n0 + t, c, h, 0], W * sizeof(floating))
                    done = start + W
            memset(dst + done, 0, (L - done) * sizeof(floating))
        return
    # Each channel's plane is read row after row (reading all channels' row h
    # before row h + 1 jumped 4 KB at every row and made this copy a fifth
    # of a strided conv's time); the rows' phases are counted, not divided
    # by the run-time stride (divisions took a third: 16->32 channels at 32x32).
    if sw == 2:
        _load_phases_sw2(x, n0, planes, sh, WQ, ph, pw, c0, c1)
        return
    for c in range(c0, c1):
        for b in range(sw):     # input columns w with (w + pw) % sw == b, every sw-th from w0
            w0 = ((b - pw) % sw + sw) % sw        # C remainder: keep it non-negative
            if w0 >= W:
                continue
            count_b = (W - w0 + sw - 1) // sw
            col = (w0 + pw) // sw
            phase_row, row = ph % sh, (ph // sh) * WQ      # of input row h = 0
            for h in range(H):
                dst = &planes[(c * sh + phase_row) * sw + b, row + col]
                src = &x[n0, c, h, w0]
                for k in range(count_b):
                    dst[k] = src[k * sw]
                phase_row += 1
                if phase_row == sh:
                    phase_row, row = 0, row + WQ


cdef void _load_phases_sw2(const floating[:, :, :, ::1] x, Py_ssize_t n0, floating[:, ::1] planes,
                           Py_ssize_t sh, Py_ssize_t WQ, Py_ssize_t ph, Py_ssize_t pw,
                           Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """_load_images for column stride 2 (every strided conv of the model zoo):
    each input row is split into its even and odd columns in one pass, a
    loop the compiler vectorises (two phase loops of 16 values per row cost
    more in loop overhead than in copying)."""
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t c, h, k, row, phase_row
    cdef Py_ssize_t b_even = pw % 2, b_odd = (1 + pw) % 2           # the phases of columns 0 and 1
    cdef Py_ssize_t col_even = pw // 2, col_odd = (1 + pw) // 2
    cdef floating* even
    cdef floating* odd
    cdef const floating* src
    for c in range(c0, c1):
        phase_row, row = ph % sh, (ph // sh) * WQ      # of input row h = 0
        for h in range(H):
            even = &planes[(c * sh + phase_row) * 2 + b_even, row + col_even]
            odd = &planes[(c * sh + phase_row) * 2 + b_odd, row + col_odd]
            src = &x[n0, c, h, 0]
            for k in range(W // 2):
                even[k] = src[2 * k]
                odd[k] = src[2 * k + 1]
            if W % 2:
                even[W // 2] = src[W - 1]
            phase_row += 1
            if phase_row == sh:
                phase_row, row = 0, row + WQ


# A conv's epilogue, applied to each value v of output channel f as it is
# written: v + bias[f]; then max(v, 0) where a ReLU sits between the conv and
# the batch norm (EP_RELU_FIRST: seed-cnn's conv, ReLU, BN); then, where an
# eval-mode batch norm reads that output (EP_BN), (v - mean[f]) * scale[f] +
# shift[f], the very floats and operations of _bn_apply, so the fused pass
# gives the separate passes' numbers; then max(v, 0) (EP_RELU). ep holds
# [bias, mean, scale, shift] per channel as an (F, 4) array
# (_epilogue_constants); ep points at channel f's row.
cdef enum:
    EP_RELU = 1
    EP_BN = 2
    EP_RELU_FIRST = 4


cdef inline floating _epilogue(floating v, floating bias, floating mf, floating scale, floating shift,
                               int mode) noexcept nogil:
    """The epilogue of one value; 0 for a ReLU where v <= 0 (NaN passes, as PyTorch's ReLU)."""
    v = v + bias
    if mode & EP_RELU_FIRST and v <= 0:
        v = 0
    if mode & EP_BN:
        v = _bn_value(v, mf, scale, shift)
    return 0 if mode & EP_RELU and v <= 0 else v


cdef void _write_rows(const floating* src, floating* dst, Py_ssize_t count,
                      const floating* ep, int mode) noexcept nogil:
    """dst = _epilogue(src) for count values, channel constants ep. They are
    passed as values: dst might alias ep, and GCC would reload them through
    the pointer and not vectorise."""
    cdef Py_ssize_t k
    cdef floating bias = ep[0], mf = ep[1], scale = ep[2], shift = ep[3]
    for k in range(count):
        dst[k] = _epilogue(src[k], bias, mf, scale, shift, mode)


def _epilogue_constants(f, dtype, bias=None, bn=None):
    """-> (ep (F, 4), mode) for the conv kernels' epilogue: bias (F,) or None;
    bn None or (mean, rstd, gamma, beta, relu_before) of an eval-mode batch
    norm ((C,) each; mean and rstd float64), turned into the per-channel floats
    _bn_apply uses; relu_before: a ReLU between the conv and the batch norm."""
    ep = np.zeros((f, 4), dtype=dtype)
    if bias is not None:
        ep[:, 0] = bias
    if bn is None:
        return ep, 0
    mean, rstd, gamma, beta, relu_before = bn
    ep[:, 1], ep[:, 2], ep[:, 3] = _column_constants(np.asarray(mean, dtype=np.float64), rstd,
                                                     np.asarray(gamma, dtype=dtype), beta, 1, dtype)
    return ep, EP_BN | EP_RELU_FIRST * bool(relu_before)


def _conv_direct(const floating[:, :, :, ::1] x, const floating[:, ::1] wt,
                 floating[:, :, :, ::1] out, Py_ssize_t sh, Py_ssize_t sw,
                 Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t T, Py_ssize_t HS, Py_ssize_t WQ,
                 floating[:, ::1] planes, floating[:, ::1] opg, const Py_ssize_t[::1] offsets,
                 const floating[:, ::1] ep, int mode, bint epilogue, int nthreads):
    """The loop of conv_direct_forward. A def over fused memoryviews: Cython
    picks the float or the double version from the arrays passed."""
    cdef Py_ssize_t N = x.shape[0], F = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t FP = opg.shape[0], P = opg.shape[1], K = offsets.shape[0]
    cdef Py_ssize_t tiles_p = P // PB
    cdef Py_ssize_t tile, n0, count, t, f, oh, i, c
    with nogil:
        for tile in range((N + T - 1) // T):
            n0 = tile * T
            count = min(T, N - n0)
            # One parallel region per grid, its loops shared in turn (each
            # prange ends on a barrier). With the loader on the calling thread
            # and a region per loop, one image's 16->16 conv at 32x32 on two
            # threads took 1.05x as long, a folded resnet-56 on one image
            # 1.02x (medians of 1000 and 200 alternating calls, AMD Zen 3).
            with parallel(num_threads=nthreads):
                for c in prange(x.shape[1], schedule="static"):
                    _load_images(x, n0, count, planes, T, HS, WQ, sh, sw, ph, pw, c, c + 1)
                # (Cython takes only a literal step in a nogil range, so tiles are counted)
                for i in prange(FP // FB * tiles_p, schedule="static"):
                    _forward_tile(&planes[0, 0], &wt[0, 0], &opg[0, 0], &offsets[0], K, P,
                                  i // tiles_p * FB, i % tiles_p * PB)
                for f in prange(F, schedule="static"):
                    for t in range(count):
                        for oh in range(OH):
                            if epilogue:    # bias, BN, ReLU while the rows are in cache: no extra pass
                                _write_rows(&opg[f, (t * HS + oh) * WQ], &out[n0 + t, f, oh, 0], OW, &ep[f, 0],
                                            mode)
                            else:
                                memcpy(&out[n0 + t, f, oh, 0], &opg[f, (t * HS + oh) * WQ], OW * sizeof(floating))


def _tile_weights(const floating[:, ::1] w2, floating[:, ::1] wt, int nthreads):
    """w2: (F, K) -> wt: (F/FB, K*FB), wt[tf, k*FB + a] = w2[tf*FB + a, k]: each
    register tile's weights contiguous, F padded with zero rows to a multiple
    of FB. One pass (NumPy's transposing copy took 0.34 ms for 256x256x3x3,
    a quarter of that conv's time on one image), each row of wt written in
    order (row by row of w2 instead, FB strided passes over a row of wt,
    36 KB at 256x256x3x3: 0.139 ms on two threads, AMD Zen 3)."""
    cdef Py_ssize_t F = w2.shape[0], K = w2.shape[1]
    cdef Py_ssize_t tf, a, f, k
    with nogil:
        for tf in prange(wt.shape[0], num_threads=nthreads, schedule="static"):
            for k in range(K):
                for a in range(FB):
                    f = tf * FB + a
                    wt[tf, k * FB + a] = w2[f, k] if f < F else 0


@functools.lru_cache(maxsize=256)      # a model asks for the same few geometries every batch
def _grid(shape, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """For input (N, C, H, W) -> (T, HS, WQ, P, L, offsets): images per grid,
    grid rows per image, row pitch, positions computed (a multiple of PB),
    length of one flat plane (room for every shifted read) and the tap
    table: offsets (C*KH*KW,) into the planes."""
    n, c, h, w = shape
    oh = (h + 2 * ph - kh) // sh + 1
    ci, i, j = np.ix_(np.arange(c), np.arange(kh), np.arange(kw))
    if sh == 1 and sw == 1:
        hs, wq = h + ph, w + pw
        t = max(1, min(n, 512 // (hs * wq)))
        p = _round_up(((t - 1) * hs + oh) * wq, PB)
        l = max((t * hs + ph) * wq, p + (kh - 1) * wq + kw - 1)
        offsets = ci * l + i * wq + j
    else:
        t, hs = 1, 0
        hq, wq = -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)
        p = _round_up(oh * wq, PB)
        l = max(hq * wq, p + ((kh - 1) // sh) * wq + (kw - 1) // sw)
        offsets = ((ci * sh + i % sh) * sw + j % sw) * l + (i // sh) * wq + j // sw
    return t, hs, wq, p, l, offsets.astype(np.intp).reshape(-1)


def direct_weights(w, int threads=1):
    """w: (F, C, KH, KW) -> the weights as conv_direct_forward's register tiles
    read them, (FP/FB, C*KH*KW*FB) (see _tile_weights). Passed back as its
    `wt`, they are not tiled again on that call: for fixed weights (a folded
    model's), tile them once."""
    w = np.ascontiguousarray(w)
    f = w.shape[0]
    wt = np.empty((_round_up(f, FB) // FB, w[0].size * FB), dtype=w.dtype)
    _tile_weights(w.reshape(f, -1), wt, threads)
    return wt


def conv_direct_forward(x, w, out, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        bias=None, bint relu=False, int threads=1, bn=None, wt=None):
    """Convolution of a chunk of images, written into out.

    x: (N, C, H, W), w: (F, C, KH, KW), out: (N, F, OH, OW) with contiguous rows,
    OH = (H + 2*PH - KH) // SH + 1 (likewise OW); as the rows are written,
    bias (F,) or None is added, bn (mean, rstd, gamma, beta, relu_before) or
    None applied (an eval-mode batch norm of the output, after a ReLU when
    relu_before; see _epilogue_constants), then
    relu. Without the GIL, on `threads` threads that share each grid's tiles:
    callers run chunks of a batch side by side on one thread each
    (minires.parallel), and give a chunk too small to split (one image)
    several threads here. wt: direct_weights(w), or None to tile w here.
    """
    x = np.ascontiguousarray(x)
    c = x.shape[1]
    f = w.shape[0]
    cdef Py_ssize_t kh = w.shape[2], kw = w.shape[3]
    fp = _round_up(f, FB)
    if wt is None:
        wt = direct_weights(np.asarray(w, dtype=x.dtype), threads)
    elif wt.shape != (fp // FB, c * kh * kw * FB) or wt.dtype != x.dtype:
        raise ValueError(f"wt must be direct_weights(w): shape {(fp // FB, c * kh * kw * FB)}, "
                         f"dtype {x.dtype}; got {wt.shape}, {wt.dtype}")
    t, hs, wq, p, l, offsets = _grid(x.shape, kh, kw, sh, sw, ph, pw)
    planes = (np.empty if sh == sw == 1 else np.zeros)((c * sh * sw, l), dtype=x.dtype)   # see _load_images
    opg = np.empty((fp, p), dtype=x.dtype)
    ep, mode = _epilogue_constants(f, x.dtype, bias, bn)
    mode |= EP_RELU * relu
    epilogue = bias is not None or mode != 0
    _conv_direct(x, wt, out, sh, sw, ph, pw, t, hs, wq, planes, opg, offsets, ep, mode, epilogue, threads)


cdef void _weight_tile(const floating* planes, const floating* dT, floating* dwt,
                       const Py_ssize_t* offsets, Py_ssize_t P, Py_ssize_t FP,
                       Py_ssize_t k0, Py_ssize_t f0) noexcept nogil:
    """dwt[k0+a, f0+q] += sum over p < P of planes[offsets[k0+a] + p] * dT[p, f0+q],
    for a < KB and q < VL: a register tile of KB taps x VL output channels."""
    cdef floating acc[KB][VL]
    cdef const floating* rows[KB]
    cdef const floating* dr
    cdef floating xv
    cdef Py_ssize_t a, q, p
    if floating is float:
        if V8_TILES:
            _weight_tile_v8(planes, dT, dwt, offsets, P, FP, k0, f0)
            return
    for a in range(KB):
        rows[a] = planes + offsets[k0 + a]
        for q in range(VL):
            acc[a][q] = 0
    for p in range(P):
        dr = dT + p * FP + f0
        for a in range(KB):
            xv = rows[a][p]
            for q in range(VL):
                acc[a][q] += xv * dr[q]
    for a in range(KB):
        for q in range(VL):
            dwt[(k0 + a) * FP + f0 + q] += acc[a][q]


# Layers of at most 16 output channels (resnet-20's first stage) would leave
# half of the 32 columns above at zero. The narrow tile, 16 taps x 16
# channels, is the same sum; it is written in C with GCC/Clang vector types
# because, as Cython loops, GCC unrolled the 16-wide channel loop and then
# vectorised across the taps with shuffles: 4x slower than the wide tile
# (measured, gcc 12). Compilers without vector types get the plain loops.
cdef extern from *:
    """
    #if defined(__GNUC__)
    typedef float minires_v16 __attribute__((vector_size(64), aligned(4)));
    /* 8 taps x 16 channels: dwt rows k0..k0+7 += sum over p of planes[offsets[k] + p] * dT[p, :] */
    static inline void minires_weight_tile8x16(const float* planes, const float* dT, float* dwt,
                                               const Py_ssize_t* offsets, Py_ssize_t P, Py_ssize_t k0) {
        const float* rows[8];
        minires_v16 acc[8];
        for (int a = 0; a < 8; a++) { rows[a] = planes + offsets[k0 + a]; acc[a] = (minires_v16){0}; }
        for (Py_ssize_t p = 0; p < P; p++) {
            minires_v16 d = *(const minires_v16*)(dT + p * 16);     /* dout's 16 channels at position p */
            for (int a = 0; a < 8; a++) acc[a] += rows[a][p] * d;
        }
        for (int a = 0; a < 8; a++)
            for (int q = 0; q < 16; q++) dwt[(k0 + a) * 16 + q] += acc[a][q];
    }
    #endif

    static void minires_weight_tile16(const float* planes, const float* dT, float* dwt,
                                      const Py_ssize_t* offsets, Py_ssize_t P,
                                      Py_ssize_t k0) {
    #if defined(__GNUC__)
        /* two passes of 8 taps: 16 row pointers at once do not fit in the
           general registers, and moving them in from vector registers took
           as many instructions as the multiply-adds (measured, gcc 12) */
        minires_weight_tile8x16(planes, dT, dwt, offsets, P, k0);
        minires_weight_tile8x16(planes, dT, dwt, offsets, P, k0 + 8);
    #else
        const float* rows[16];
        float acc[16][16] = {{0}};
        for (int a = 0; a < 16; a++) rows[a] = planes + offsets[k0 + a];
        for (Py_ssize_t p = 0; p < P; p++)
            for (int a = 0; a < 16; a++)
                for (int q = 0; q < 16; q++) acc[a][q] += rows[a][p] * dT[p * 16 + q];
        for (int a = 0; a < 16; a++)
            for (int q = 0; q < 16; q++) dwt[(k0 + a) * 16 + q] += acc[a][q];
    #endif
    }
    """
    void _weight_tile16 "minires_weight_tile16"(const float* planes, const float* dT, float* dwt,
                                                const Py_ssize_t* offsets, Py_ssize_t P,
                                                Py_ssize_t k0) noexcept nogil


cdef void _dout_on_grid(const floating[:, :, :, ::1] dout, Py_ssize_t n0, Py_ssize_t count,
                        floating[:, ::1] dT, Py_ssize_t T, Py_ssize_t HS, Py_ssize_t WQ) noexcept nogil:
    """dT[(t*HS + oh)*WQ + ow, f] = dout[n0 + t, f, oh, ow]: dout transposed onto
    the grid (junk rows stay zero); slots t >= count (a partial last tile) are zeroed.
    Position by position, all channels of one position are read one value per
    channel plane; when the planes lie 4 KB apart or more (32x32 and up in
    float32) every such read falls in the same L1 cache set, so big planes go
    in blocks of 8 channels x 8 columns instead (64 channels at 32x32, a
    64-image chunk's weight gradient: 67 -> 60 ms; on 16x16 and 8x8 maps the
    blocks cost 4-7% more, measured on AMD Zen 4)."""
    cdef Py_ssize_t F = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3], FP = dT.shape[1]
    cdef Py_ssize_t t, oh, f0, w0, f, ow
    cdef bint blocks = OH * OW * sizeof(floating) >= 4096
    cdef const floating* src
    cdef floating* dst
    for t in range(T):
        for oh in range(OH):
            dst = &dT[(t * HS + oh) * WQ, 0]       # OW rows of FP values, contiguous
            if t >= count:
                memset(dst, 0, OW * FP * sizeof(floating))
            elif not blocks:
                for ow in range(OW):
                    for f in range(F):
                        dst[ow * FP + f] = dout[n0 + t, f, oh, ow]
            else:
                for f0 in range(0, F, 8):       # (a nogil range takes only a literal step)
                    for w0 in range(0, OW, 8):
                        for f in range(f0, min(f0 + 8, F)):
                            src = &dout[n0 + t, f, oh, 0]
                            for ow in range(w0, min(w0 + 8, OW)):
                                dst[ow * FP + f] = src[ow]


def _conv_direct_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dout,
                        floating[:, ::1] dwt, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t T, Py_ssize_t HS, Py_ssize_t WQ,
                        floating[:, ::1] planes, floating[:, ::1] dT, const Py_ssize_t[::1] offsets):
    """The loop of conv_direct_backward_weight (a def over fused memoryviews, as _conv_direct)."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t P = dT.shape[0], FP = dT.shape[1], KP = dwt.shape[0]
    cdef Py_ssize_t tile, n0, count, f0, k0, tk, tf
    with nogil:
        for tile in range((N + T - 1) // T):
            n0 = tile * T
            count = min(T, N - n0)
            _load_images(x, n0, count, planes, T, HS, WQ, sh, sw, ph, pw, 0, x.shape[1])
            _dout_on_grid(dout, n0, count, dT, T, HS, WQ)
            if floating is float and WIDE_TILES:
                if FP == NARROW:
                    for k0 in range(0, KP, 16):
                        _weight_tile16(&planes[0, 0], &dT[0, 0], &dwt[0, 0], &offsets[0], P, k0)
                    continue
            if WIDE_TILES:
                # Literal steps (KB, VL; checked at import): counting tiles
                # instead, as the forward does, made this loop 8% slower under gcc 12.
                for k0 in range(0, KP, 8):
                    for f0 in range(0, FP, 32):
                        _weight_tile(&planes[0, 0], &dT[0, 0], &dwt[0, 0], &offsets[0], P, FP, k0, f0)
            else:
                for tk in range(KP // KB):
                    for tf in range(FP // VL):
                        _weight_tile(&planes[0, 0], &dT[0, 0], &dwt[0, 0], &offsets[0], P, FP, tk * KB, tf * VL)


def conv_direct_backward_weight(x, dout, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                Py_ssize_t ph, Py_ssize_t pw):
    """Weight gradient of a convolution over a chunk of images.

    x: (N, C, H, W), dout: (N, F, OH, OW) -> dw: (F, C, KH, KW), summed over
    the chunk. Single-threaded, without the GIL (as conv_direct_forward).
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    c = x.shape[1]
    f = dout.shape[1]
    k = c * kh * kw
    t, hs, wq, p, l, taps = _grid(x.shape, kh, kw, sh, sw, ph, pw)
    planes = (np.empty if sh == sw == 1 else np.zeros)((c * sh * sw, l), dtype=x.dtype)   # see _load_images
    narrow = WIDE_TILES and x.dtype == np.float32 and f <= NARROW
    cols = NARROW if narrow else _round_up(f, VL)
    taps_per_tile = NARROW if narrow else KB
    dT = np.zeros((p, cols), dtype=x.dtype)       # (P, F) padded to the tile's columns
    dwt = np.zeros((_round_up(k, taps_per_tile), cols), dtype=x.dtype)
    offsets = np.zeros(dwt.shape[0], dtype=np.intp)           # padding taps read position 0
    offsets[:k] = taps
    _conv_direct_weight(x, dout, dwt, sh, sw, ph, pw, t, hs, wq, planes, dT, offsets)
    return np.ascontiguousarray(dwt[:k, :f].T).reshape(f, c, kh, kw)


# ---------------------------------------------------------------- Winograd convolution
# The maths is in _kernels_ref.conv_winograd_forward: each 4x4 tile of the
# padded input is transformed (V = BT d BT^T), the 16 elements of the
# transformed tiles meet the transformed kernels U in 16 matrix products
# (M = U @ V), and each product tile goes back to a 2x2 output block
# (AT M AT^T). Here the batch's rows of tiles go in blocks of TB tiles
# (parts of an image, or several images), sized so that the block's
# V (16, C, TB) and M (16, FP, TB) stay in the L2 cache from one step to
# the next (a NumPy version that transforms the whole batch at once
# spent its time moving them through memory: 2x to 43x slower than the
# direct kernel). The products reuse the direct convolution's register tile:
# a channel's row of V plays a tap.
#
# Each array of 16 planes (u, v, m, d, du) has its planes PLANE_PAD values
# longer than their contents: the contents' sizes are often multiples of
# 4 KB, and then the transforms' 16 streams, one per plane, would all fall
# in the same L1 cache set (the kernels' transform, 256x256 kernels, one
# thread, AMD Zen 3: 2.68 ms with planes of 256 KB, 0.56 ms padded; 128x128
# kernels 0.63 and 0.14 ms).
PLANE_PAD = 16


cdef inline void _winograd_plane(const floating* src, Py_ssize_t H, Py_ssize_t TW, Py_ssize_t th0,
                                 Py_ssize_t th1, floating* hb, floating* dst, Py_ssize_t plane) noexcept nogil:
    """The tiles of tile rows th0 <= th < th1 of one channel plane src (H, 2*TW),
    transformed: dst[k * plane + (th-th0)*TW + tw] = (BT d BT^T)[k // 4, k % 4]
    for tile (th, tw). BT along the rows first, into hb ((H+2) rows of 4 x TW;
    rows 0 and H+1, the zero padding, stay zero), then down the columns. hb
    holds 2*TW + 2 more values: a padded row."""
    cdef Py_ssize_t r, tw, th, j
    cdef const floating* h0
    cdef floating* hr
    cdef floating* d
    cdef floating* pr = hb + (H + 2) * 4 * TW
    cdef floating b, c, x1, x2
    for r in range(max(0, 2 * th0 - 1), min(H, 2 * th1 + 1)):     # padded rows 2*th0 .. 2*th1+1
        # the padded row in pr (its two zeros stay from allocation); tile tw
        # covers its columns 2tw..2tw+3
        memcpy(pr + 1, src + r * 2 * TW, 2 * TW * sizeof(floating))
        hr = hb + (r + 1) * 4 * TW
        for tw in range(TW):
            b = pr[2 * tw + 1]
            c = pr[2 * tw + 2]
            hr[tw] = pr[2 * tw] - c
            hr[TW + tw] = b + c
            hr[2 * TW + tw] = c - b
            hr[3 * TW + tw] = b - pr[2 * tw + 3]
    for th in range(th0, th1):
        h0 = hb + 2 * th * 4 * TW                 # rows 2th..2th+3 of hb
        d = dst + (th - th0) * TW
        for j in range(4):
            for tw in range(TW):
                x1 = h0[4 * TW + j * TW + tw]
                x2 = h0[8 * TW + j * TW + tw]
                d[j * plane + tw] = h0[j * TW + tw] - x2
                d[(4 + j) * plane + tw] = x1 + x2
                d[(8 + j) * plane + tw] = x2 - x1
                d[(12 + j) * plane + tw] = x1 - h0[12 * TW + j * TW + tw]


# The same transform for float32 planes 8, 16 or 32 pixels wide, written in
# C with GCC/Clang vector types: gcc 12 left the row pass above scalar (its
# reads go two by two) behind run-time aliasing checks. A row of 2*TW
# pixels is one vector; its even and odd pixels are split with shuffles,
# and the tile sums then run TW tiles at a time. Each image row is
# transformed once: a tile row shares two image rows with the one before.
# The output transform (minires_winograd_out*, for _winograd_output below)
# likewise takes a tile row at a time and interleaves the 2x2 blocks into
# output rows with shuffles. 64 images of 32 channels at 16x16, one thread,
# AMD Zen 4: the whole forward 3.27 -> 1.97 ms. Compilers without vector
# types or __builtin_shufflevector (gcc < 12) run the Cython loops. Without
# AVX-512 the output of maps 32 wide runs as two halves of 8 tiles (the
# tile-row pitch P): gcc 12's code for 16-float vectors on AVX2 made the
# ReLU's mask so slow that 64->64 channels at 32x32 with a fused ReLU took
# 86.9 ms against 53.4 in halves (56.7 / 53.7 without the ReLU; batch 128,
# 2 threads, AMD Zen 3), 1.0 and 0.62 of the direct kernel's time.
cdef extern from *:
    """
    #if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    #define MINIRES_WINOGRAD_VECTORS 1
    #define MINIRES_LIST(...) __VA_ARGS__
    #define MINIRES_WINOGRAD_PLANE(TW, EVEN, ODD, PREV, NEXT)                                          \
    static void minires_winograd_plane##TW(const float* src, Py_ssize_t H, Py_ssize_t th0, Py_ssize_t th1, \
                                           float* dst, Py_ssize_t plane) {                             \
        typedef float vec __attribute__((vector_size(4 * TW), aligned(4)));                            \
        typedef float row __attribute__((vector_size(8 * TW), aligned(4)));                            \
        const vec zero = {0};                                                                          \
        vec h[4][4];           /* BT along padded rows 2th..2th+3 of tile row th: h[slot][j] */         \
        Py_ssize_t th = th0;                                                                           \
        for (int j = 0; j < 4; j++) h[0][j] = zero;          /* padded row 0: the top border */      \
        for (Py_ssize_t r = th0 ? 2 * th0 - 1 : 0; th < th1; r++) {                                    \
            Py_ssize_t k = r + 1 - 2 * th;       /* image row r is padded row r + 1 */                  \
            if (r < H) {                                                                               \
                row x = *(const row*)(src + r * 2 * TW);                                               \
                vec e = __builtin_shufflevector(x, x, MINIRES_LIST EVEN);                              \
                vec o = __builtin_shufflevector(x, x, MINIRES_LIST ODD);                               \
                /* tile tw reads padded columns 2tw..2tw+3: o[tw-1], e[tw], o[tw], e[tw+1] */          \
                vec op = __builtin_shufflevector(o, zero, MINIRES_LIST PREV);                          \
                vec en = __builtin_shufflevector(e, zero, MINIRES_LIST NEXT);                          \
                h[k][0] = op - o; h[k][1] = e + o; h[k][2] = o - e; h[k][3] = e - en;                  \
            } else {                              /* padded row H + 1: the bottom border */             \
                for (int j = 0; j < 4; j++) h[3][j] = zero;                                            \
                k = 3;                                                                                 \
            }                                                                                          \
            if (k == 3) {                         /* tile row th is complete: BT down the columns */    \
                float* d = dst + (th - th0) * TW;                                                      \
                for (int j = 0; j < 4; j++) {                                                          \
                    *(vec*)(d + j * plane) = h[0][j] - h[2][j];                                        \
                    *(vec*)(d + (4 + j) * plane) = h[1][j] + h[2][j];                                  \
                    *(vec*)(d + (8 + j) * plane) = h[2][j] - h[1][j];                                  \
                    *(vec*)(d + (12 + j) * plane) = h[1][j] - h[3][j];                                 \
                    h[0][j] = h[2][j];                                                                 \
                    h[1][j] = h[3][j];                                                                 \
                }                                                                                      \
                th++;                                                                                  \
            }                                                                                          \
        }                                                                                              \
    }
    MINIRES_WINOGRAD_PLANE(4, (0, 2, 4, 6), (1, 3, 5, 7), (4, 0, 1, 2), (1, 2, 3, 4))
    MINIRES_WINOGRAD_PLANE(8, (0, 2, 4, 6, 8, 10, 12, 14), (1, 3, 5, 7, 9, 11, 13, 15),
                           (8, 0, 1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, 7, 8))
    MINIRES_WINOGRAD_PLANE(16, (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                           (1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
                           (16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14),
                           (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16))
    #define MINIRES_WINOGRAD_OUT(TW, INTERLEAVE)                                                       \
    static int minires_winograd_out##TW(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, \
                                        float* o, Py_ssize_t W, const float* ep, int mode) {          \
        typedef float vec __attribute__((vector_size(4 * TW), aligned(4)));                            \
        typedef int ivec __attribute__((vector_size(4 * TW)));                                         \
        typedef float row __attribute__((vector_size(8 * TW), aligned(4)));                            \
        const vec zero = {0};                                                                          \
        const float bias = ep[0], mean = ep[1], scale = ep[2], shift = ep[3];   /* o may alias ep */   \
        ivec bad = {0};                                                                                \
        for (Py_ssize_t th = 0; th < TH; th++) {                                                       \
            const float* q = mp + th * P;                                                              \
            vec m[16];                                                                                 \
            for (int k = 0; k < 16; k++) m[k] = *(const vec*)(q + k * S);                              \
            vec y[4];                                                                                  \
            for (int a = 0; a < 2; a++) {        /* AT down the columns, then along the rows */         \
                vec s0 = a ? m[4] - m[8] - m[12] : m[0] + m[4] + m[8];                                 \
                vec s1 = a ? m[5] - m[9] - m[13] : m[1] + m[5] + m[9];                                 \
                vec s2 = a ? m[6] - m[10] - m[14] : m[2] + m[6] + m[10];                               \
                vec s3 = a ? m[7] - m[11] - m[15] : m[3] + m[7] + m[11];                               \
                y[2 * a] = s0 + s1 + s2;                                                               \
                y[2 * a + 1] = s1 - s2 - s3;                                                           \
            }                                                                                          \
            for (int i = 0; i < 4; i++) {                                                              \
                bad |= (y[i] - y[i]) != 0;       /* inf - inf and NaN - NaN are NaN */                  \
                y[i] += bias;                                                                          \
                if (mode & 4)                    /* EP_RELU_FIRST */                                   \
                    y[i] = (vec)((ivec)y[i] & ~(y[i] <= zero));                                        \
                if (mode & 2)                    /* EP_BN: _bn_value's operations */                   \
                    y[i] = (y[i] - mean) * scale + shift;                                              \
                if (mode & 1)                    /* EP_RELU: 0 where y <= 0; NaN passes, as PyTorch */  \
                    y[i] = (vec)((ivec)y[i] & ~(y[i] <= zero));                                        \
            }                                                                                          \
            *(row*)(o + 2 * th * W) = __builtin_shufflevector(y[0], y[1], MINIRES_LIST INTERLEAVE);    \
            *(row*)(o + (2 * th + 1) * W) = __builtin_shufflevector(y[2], y[3], MINIRES_LIST INTERLEAVE); \
        }                                                                                              \
        for (int i = 0; i < TW; i++) if (bad[i]) return 1;                                             \
        return 0;                                                                                      \
    }
    MINIRES_WINOGRAD_OUT(4, (0, 4, 1, 5, 2, 6, 3, 7))
    MINIRES_WINOGRAD_OUT(8, (0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15))
    MINIRES_WINOGRAD_OUT(16, (0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31))
    #else
    #define MINIRES_WINOGRAD_VECTORS 0
    static int minires_winograd_out4(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o, Py_ssize_t W, const float* ep, int mode) { return 0; }
    static int minires_winograd_out8(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o, Py_ssize_t W, const float* ep, int mode) { return 0; }
    static int minires_winograd_out16(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o, Py_ssize_t W, const float* ep, int mode) { return 0; }
    static void minires_winograd_plane4(const float* src, Py_ssize_t H, Py_ssize_t th0, Py_ssize_t th1, float* dst, Py_ssize_t plane) {}
    static void minires_winograd_plane8(const float* src, Py_ssize_t H, Py_ssize_t th0, Py_ssize_t th1, float* dst, Py_ssize_t plane) {}
    static void minires_winograd_plane16(const float* src, Py_ssize_t H, Py_ssize_t th0, Py_ssize_t th1, float* dst, Py_ssize_t plane) {}
    #endif
    """
    int _WINOGRAD_VECTORS "MINIRES_WINOGRAD_VECTORS"
    void _winograd_plane4 "minires_winograd_plane4"(const float* src, Py_ssize_t H, Py_ssize_t th0,
                                                     Py_ssize_t th1, float* dst, Py_ssize_t plane) noexcept nogil
    void _winograd_plane8 "minires_winograd_plane8"(const float* src, Py_ssize_t H, Py_ssize_t th0,
                                                     Py_ssize_t th1, float* dst, Py_ssize_t plane) noexcept nogil
    void _winograd_plane16 "minires_winograd_plane16"(const float* src, Py_ssize_t H, Py_ssize_t th0,
                                                       Py_ssize_t th1, float* dst, Py_ssize_t plane) noexcept nogil
    int _winograd_out4 "minires_winograd_out4"(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o,
                                                  Py_ssize_t W, const float* ep, int mode) noexcept nogil
    int _winograd_out8 "minires_winograd_out8"(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o,
                                                  Py_ssize_t W, const float* ep, int mode) noexcept nogil
    int _winograd_out16 "minires_winograd_out16"(const float* mp, Py_ssize_t S, Py_ssize_t TH, Py_ssize_t P, float* o,
                                                  Py_ssize_t W, const float* ep, int mode) noexcept nogil


cdef inline Py_ssize_t _band(Py_ssize_t g, Py_ssize_t g1, Py_ssize_t TH, Py_ssize_t* n,
                             Py_ssize_t* th0) noexcept nogil:
    """Tile row g of the batch, in a block that ends at g1: its image n and row
    th0 there; -> th1, the end of the rows of that image the block holds."""
    n[0] = g // TH
    th0[0] = g - n[0] * TH
    return min(TH, th0[0] + g1 - g)


cdef void _winograd_input(const floating[:, :, :, ::1] x, Py_ssize_t g0, Py_ssize_t g1,
                          floating* hb, floating* v, Py_ssize_t TB, Py_ssize_t plane,
                          Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """v[k, c, t] = (BT d BT^T)[k // 4, k % 4] for every tile d of channels
    c0 <= c < c1 in tile rows g0 <= g < g1 of the batch x (tile row g is row
    g % TH of image g // TH; t = (g - g0)*TW + tw), the 16 planes of v `plane`
    values apart. Float32 maps 8, 16 or 32 wide take the C vector code above;
    other widths, float64 and compilers without vector types take _winograd_plane."""
    cdef Py_ssize_t H = x.shape[2], TW = x.shape[3] // 2, TH = x.shape[2] // 2
    cdef Py_ssize_t g = g0, n, th0, th1, c
    cdef floating* dst
    while g < g1:                       # one image's share of the block at a time
        th1 = _band(g, g1, TH, &n, &th0)
        for c in range(c0, c1):
            dst = v + c * TB + (g - g0) * TW
            if floating is float:
                if _WINOGRAD_VECTORS and (TW == 4 or TW == 8 or TW == 16):
                    if TW == 4:
                        _winograd_plane4(&x[n, c, 0, 0], H, th0, th1, dst, plane)
                    elif TW == 8:
                        _winograd_plane8(&x[n, c, 0, 0], H, th0, th1, dst, plane)
                    else:
                        _winograd_plane16(&x[n, c, 0, 0], H, th0, th1, dst, plane)
                    continue
            _winograd_plane(&x[n, c, 0, 0], H, TW, th0, th1, hb, dst, plane)
        g += th1 - th0


cdef int _winograd_output(const floating* m, floating[:, :, :, ::1] out, Py_ssize_t g0,
                          Py_ssize_t g1, Py_ssize_t TB, Py_ssize_t S, floating* y,
                          const floating[:, ::1] ep, int mode, Py_ssize_t f0, Py_ssize_t f1) noexcept nogil:
    """Output channels f0 <= f < f1 of tile rows g0 <= g < g1 of the batch (as
    _winograd_input's): out = AT m AT^T per tile (m: 16 planes of (FP, TB), S values apart), then
    the epilogue (ep, mode); -> 1 if any of these sums was inf or NaN.
    An image's tiles lie side by side in each plane of m, so the transform
    runs over all of them at once (vectorised) into y (4, rows*TW), then
    y's 2x2 blocks are spread into the output rows."""
    cdef Py_ssize_t H = out.shape[2], W = out.shape[3]
    cdef Py_ssize_t TH = H // 2, TW = W // 2, R
    cdef Py_ssize_t g = g0, n, th0, th1, f, th, tw, r
    cdef const floating* mp
    cdef const floating* yr
    cdef floating* o0
    cdef floating s0, s1, s2, s3
    cdef const floating* e
    cdef int bad = 0
    while g < g1:
        th1 = _band(g, g1, TH, &n, &th0)
        R = (th1 - th0) * TW
        for f in range(f0, f1):
            mp = m + f * TB + (g - g0) * TW
            if floating is float:
                if _WINOGRAD_VECTORS and (TW == 4 or TW == 8 or TW == 16):
                    if TW == 4:
                        bad |= _winograd_out4(mp, S, th1 - th0, 4, &out[n, f, 2 * th0, 0], W, &ep[f, 0], mode)
                    elif TW == 8:
                        bad |= _winograd_out8(mp, S, th1 - th0, 8, &out[n, f, 2 * th0, 0], W, &ep[f, 0], mode)
                    elif WIDE_TILES:
                        bad |= _winograd_out16(mp, S, th1 - th0, 16, &out[n, f, 2 * th0, 0], W, &ep[f, 0], mode)
                    else:   # (see the vector code above) in two halves of 8 tiles, each 16 output columns
                        bad |= _winograd_out8(mp, S, th1 - th0, 16, &out[n, f, 2 * th0, 0], W, &ep[f, 0], mode)
                        bad |= _winograd_out8(mp + 8, S, th1 - th0, 16, &out[n, f, 2 * th0, 16], W, &ep[f, 0], mode)
                    continue
            for r in range(R):
                # AT down the columns of the 4x4 tile, then along its two rows
                s0 = mp[r] + mp[4 * S + r] + mp[8 * S + r]
                s1 = mp[S + r] + mp[5 * S + r] + mp[9 * S + r]
                s2 = mp[2 * S + r] + mp[6 * S + r] + mp[10 * S + r]
                s3 = mp[3 * S + r] + mp[7 * S + r] + mp[11 * S + r]
                y[r] = s0 + s1 + s2
                y[R + r] = s1 - s2 - s3
            for r in range(R):
                s0 = mp[4 * S + r] - mp[8 * S + r] - mp[12 * S + r]
                s1 = mp[5 * S + r] - mp[9 * S + r] - mp[13 * S + r]
                s2 = mp[6 * S + r] - mp[10 * S + r] - mp[14 * S + r]
                s3 = mp[7 * S + r] - mp[11 * S + r] - mp[15 * S + r]
                y[2 * R + r] = s0 + s1 + s2
                y[3 * R + r] = s1 - s2 - s3
            for r in range(4 * R):
                bad |= y[r] - y[r] != 0         # inf - inf and NaN - NaN are NaN
            e = &ep[f, 0]
            for th in range(th1 - th0):
                o0 = &out[n, f, 2 * (th0 + th), 0]
                yr = y + th * TW
                for tw in range(TW):
                    o0[2 * tw] = _epilogue(yr[tw], e[0], e[1], e[2], e[3], mode)
                    o0[2 * tw + 1] = _epilogue(yr[R + tw], e[0], e[1], e[2], e[3], mode)
                    o0[W + 2 * tw] = _epilogue(yr[2 * R + tw], e[0], e[1], e[2], e[3], mode)
                    o0[W + 2 * tw + 1] = _epilogue(yr[3 * R + tw], e[0], e[1], e[2], e[3], mode)
        g += th1 - th0
    return bad


cdef void _winograd_products(const floating* v, Py_ssize_t sv, const floating* u, Py_ssize_t su,
                             floating* m, Py_ssize_t sm, const Py_ssize_t* offsets, Py_ssize_t C,
                             Py_ssize_t P, Py_ssize_t tf0, Py_ssize_t tf1, Py_ssize_t used) noexcept nogil:
    """The 16 products of a block, m_k = U_k V_k, for the register tiles tf0 <= tf < tf1
    of output channels and `used` positions (a multiple of PB): planes of v, u and m
    sv, su and sm values apart, P positions per channel's row. k outermost: a plane of
    v stays in L1 for all its tiles of output channels."""
    cdef Py_ssize_t k, tf, tp
    for k in range(16):
        for tf in range(tf0, tf1):
            for tp in range(used // PB):
                _forward_tile(v + k * sv, u + k * su, m + k * sm, offsets, C, P, tf * FB, tp * PB)


def _conv_winograd(const floating[:, :, :, ::1] x, const floating[:, ::1] u,
                   floating[:, :, :, ::1] out, Py_ssize_t RB, floating[::1] hb,
                   floating[:, ::1] v, floating[:, ::1] m, Py_ssize_t TB, floating[::1] y,
                   const Py_ssize_t[::1] offsets,
                   const floating[:, ::1] ep, int mode):
    """The loop of conv_winograd_forward: RB tile rows of the batch (at most TB
    tiles) per block; -> False if some output before the epilogue was inf or NaN."""
    cdef Py_ssize_t C = x.shape[1], F = out.shape[1], FP = (u.shape[1] - PLANE_PAD) // x.shape[1]
    cdef Py_ssize_t TW = x.shape[3] // 2, rows = x.shape[0] * (x.shape[2] // 2)
    cdef Py_ssize_t block, g0, g1
    cdef int bad = 0
    with nogil:
        for block in range((rows + RB - 1) // RB):
            g0 = block * RB
            g1 = min(g0 + RB, rows)
            _winograd_input(x, g0, g1, &hb[0], &v[0, 0], TB, v.shape[1], 0, C)
            _winograd_products(&v[0, 0], v.shape[1], &u[0, 0], u.shape[1], &m[0, 0], m.shape[1], &offsets[0], C,
                               TB, 0, FP // FB, _round_up((g1 - g0) * TW, PB))
            bad |= _winograd_output(&m[0, 0], out, g0, g1, TB, m.shape[1], &y[0], ep, mode, 0, F)
    return not bad


def _conv_winograd_shared(const floating[:, :, :, ::1] x, const floating[:, ::1] u,
                          floating[:, :, :, ::1] out, Py_ssize_t RB, floating[:, ::1] hb,
                          floating[:, ::1] v, floating[:, ::1] m, Py_ssize_t TB, floating[:, ::1] y,
                          const Py_ssize_t[::1] offsets, const floating[:, ::1] ep, int mode, int[::1] bad):
    """conv_winograd_forward's loop on hb.shape[0] threads, for one image (or a
    few): all the blocks side by side in v and m (block b's tiles from column
    b*TB of each channel's row, which is TBALL = blocks * TB long). The input
    transforms are shared by (block, channel), then the products and output
    transforms by (block, a thread's share of the register tiles of output
    channels), each share's products as _winograd_products runs them (with the
    output channels outermost instead, v's planes came from L2 for every
    tile: 1.5-1.8x the time).
    bad[thread] = 1 where an output before the epilogue was inf or NaN."""
    cdef Py_ssize_t C = x.shape[1], F = out.shape[1], FP = (u.shape[1] - PLANE_PAD) // x.shape[1]
    cdef Py_ssize_t TW = x.shape[3] // 2, rows = x.shape[0] * (x.shape[2] // 2)
    cdef Py_ssize_t blocks = (rows + RB - 1) // RB, NF = FP // FB, TBALL = blocks * TB
    cdef Py_ssize_t G = min(NF, hb.shape[0])
    cdef Py_ssize_t i, b, g0, g1, tf0, tf1
    with nogil, parallel(num_threads=hb.shape[0]):
        for i in prange(blocks * C, schedule="static"):
            b = i // C
            _winograd_input(x, b * RB, min(b * RB + RB, rows), &hb[threadid(), 0], &v[0, b * TB], TBALL,
                            v.shape[1], i % C, i % C + 1)
        for i in prange(blocks * G, schedule="static"):
            b = i // G
            tf0, tf1 = i % G * NF // G, (i % G + 1) * NF // G
            g0 = b * RB
            g1 = min(g0 + RB, rows)
            _winograd_products(&v[0, b * TB], v.shape[1], &u[0, 0], u.shape[1], &m[0, b * TB], m.shape[1],
                               &offsets[0], C, TBALL, tf0, tf1, _round_up((g1 - g0) * TW, PB))
            bad[threadid()] |= _winograd_output(&m[0, b * TB], out, g0, g1, TBALL, m.shape[1],
                                                &y[threadid(), 0], ep, mode, tf0 * FB, min(F, tf1 * FB))


# Tiles per block: V and M of a block take 64 * (C + FP) * TB bytes in
# float32; this keeps them near 512 KB, half the L2 cache of one core (AMD
# Zen 4: 1 MB; 2 MB on Sapphire Rapids). 4096, 8192 and 16384 timed within
# 5% of each other on most layers; 8192 was the best or near it on all.
# A block is a run of tile rows of the batch, not whole images: with whole
# images the wide layers' blocks were one image rounded up to PB tiles
# (256 channels at 8x8: 16 tiles computed as 24), and their forward now
# takes 0.70-0.75 of that time, 128 at 16x16 0.75-0.85, 32 at 16x16 and 64
# at 8x8 0.90-0.94 (one thread, 16 images, medians of 41 alternating runs,
# AMD Zen 3). The weight gradient's tile adds its sums into dU once per
# block, which costs as much as 8 of its positions, so its blocks keep
# whole images and at least WINOGRAD_WEIGHT_TILES tiles (256 channels at
# 8x8, 64 tiles instead of one image's 16: 0.67-0.69 of the time, when the
# tile still added its sums one by one; see the weight tile above).
WINOGRAD_BLOCK = 8192
WINOGRAD_WEIGHT_TILES = 64
# Shared between threads (one image), every block's tiles are held at once
# and u, the biggest array, is read once per block, so blocks are 4x bigger:
# one block for a 32x32 image at 64 channels, 16x16 at 128, 8x8 at 256.
# One image, 2 threads, AMD Zen 3, medians of 6 alternating runs, ms, one
# block / blocks of WINOGRAD_BLOCK: 128->128 at 16x16 0.46 / 0.63, 64->64 at
# 32x32 0.63 / 0.69 (blocks of 4 or 6 tile rows 0.67-0.70).
WINOGRAD_SHARED_BLOCK = 4 * WINOGRAD_BLOCK


cdef void _g_transform(const floating* g, floating* u, Py_ssize_t stride) noexcept nogil:
    """u[k * stride] = (G g G^T)[k // 4, k % 4] for one 3x3 kernel g (row-major),
    G's rows written out: (1, 0, 0), (1, 1, 1)/2, (1, -1, 1)/2, (0, 0, 1)."""
    cdef floating t[4][3]
    cdef floating half
    cdef Py_ssize_t i, b
    for b in range(3):                          # G down the columns of g
        half = (g[b] + g[6 + b]) * <floating>0.5
        t[0][b] = g[b]
        t[1][b] = half + g[3 + b] * <floating>0.5
        t[2][b] = half - g[3 + b] * <floating>0.5
        t[3][b] = g[6 + b]
    for i in range(4):                          # then G^T along each row
        half = (t[i][0] + t[i][2]) * <floating>0.5
        u[(4 * i) * stride] = t[i][0]
        u[(4 * i + 1) * stride] = half + t[i][1] * <floating>0.5
        u[(4 * i + 2) * stride] = half - t[i][1] * <floating>0.5
        u[(4 * i + 3) * stride] = t[i][2]


def _winograd_weights(const floating[:, :, :, ::1] w, floating[:, ::1] u):
    """The loop of winograd_weights (padding channels of u stay zero)."""
    cdef Py_ssize_t F = w.shape[0], C = w.shape[1], f, c
    with nogil:
        for f in range(F):
            for c in range(C):
                # u[k] is (FP/FB, C, FB): channel f of tile f // FB, column f % FB
                _g_transform(&w[f, c, 0, 0], &u[0, ((f // FB) * C + c) * FB + f % FB], u.shape[1])


def winograd_weights(w):
    """w: (F, C, 3, 3) -> the transformed kernels G w G^T, (16, F/FB, C, FB)
    flattened to (16, FP*C + PLANE_PAD): for each of the 16 products, each register
    tile's weights contiguous (F padded with zeros to FP, a multiple of FB),
    as conv_winograd_forward reads them."""
    w = np.ascontiguousarray(w)
    u = np.zeros((16, _round_up(w.shape[0], FB) * w.shape[1] + PLANE_PAD), dtype=w.dtype)
    _winograd_weights(w, u)
    return u


def _winograd_blocks(shape, Py_ssize_t fp, bint forward, budget=None):
    """For x (N, C, H, W) of this shape and FP output columns -> (RB tile rows
    of the batch per block, TB tiles per block). A block holds about
    WINOGRAD_BLOCK / (C + FP) tiles: part of an image, or several images. The
    forward's products run PB tiles at a time, so there RB is rounded to tile
    rows that fill whole register tiles; the weight gradient's run over the
    block's exact tiles, and take whole images, at least one."""
    n, c, h, wd = shape
    th, tw = h // 2, wd // 2
    tiles = max(PB if forward else WINOGRAD_WEIGHT_TILES, (budget or WINOGRAD_BLOCK) // (c + fp))
    rows = max(1, tiles // tw)
    step = PB // math.gcd(PB, tw)              # tile rows that fill whole register tiles
    if forward and step * tw <= 2 * tiles:
        rows = max(step, (rows + step // 2) // step * step)
    elif not forward:
        rows = max(th, rows - rows % th)
    rows = min(rows, n * th)
    return rows, _round_up(rows * tw, PB)


def _winograd_scratch(shape, Py_ssize_t tb, dtype, Py_ssize_t threads=1):
    """For x (N, C, H, W) of this shape -> (v: the transformed tiles, (16, C*TB +
    PLANE_PAD), hb: the input transform's scratch, one row per thread). v
    starts at zero, so that tiles past the last one of a partial block stay finite."""
    n, c, h, wd = shape
    return (np.zeros((16, c * tb + PLANE_PAD), dtype=dtype),
            np.zeros((threads, (h + 2) * 2 * wd + wd + 2), dtype=dtype))


def conv_winograd_forward(x, u, out, bias=None, bint relu=False, bn=None, int threads=1):
    """The stride-1, padding-1 3x3 convolution of a chunk of images by
    Winograd's F(2x2, 3x3), written into out.

    x: (N, C, H, W) with H and W even, u = winograd_weights(w) for w (F, C,
    3, 3), out: (N, F, H, W) with contiguous rows; bias (F,) or None is added,
    bn (an eval-mode batch norm, as conv_direct_forward's) and relu applied
    as the output is written. Without the GIL (as conv_direct_forward), on
    one thread, or on `threads` that share one image's work (all its tiles
    held at once: for one image or a few; see _conv_winograd_shared).
    -> True, or False if an output before bias and ReLU came out inf or
    NaN: Winograd's tiles spread a non-finite input over more outputs than
    the direct sum does, so the caller then computes the convolution another
    way (before bias, BN and ReLU).
    """
    x = np.ascontiguousarray(x)
    n, c, h, wd = x.shape
    f = out.shape[1]
    fp = (u.shape[1] - PLANE_PAD) // c
    rows, tb = _winograd_blocks(x.shape, fp, True, WINOGRAD_BLOCK if threads == 1 else WINOGRAD_SHARED_BLOCK)
    ep, mode = _epilogue_constants(f, x.dtype, bias, bn)
    mode |= EP_RELU * relu
    y = np.empty((threads, 4 * (h // 2) * (wd // 2)), dtype=x.dtype)
    if threads == 1:
        v, hb = _winograd_scratch(x.shape, tb, x.dtype)
        m = np.empty((16, fp * tb + PLANE_PAD), dtype=x.dtype)
        return _conv_winograd(x, u, out, rows, hb[0], v, m, tb, y[0], np.arange(c, dtype=np.intp) * tb, ep,
                              mode)
    tball = -(-n * (h // 2) // rows) * tb                 # every block's tiles side by side
    v, hb = _winograd_scratch(x.shape, tball, x.dtype, threads)
    m = np.empty((16, fp * tball + PLANE_PAD), dtype=x.dtype)
    bad = np.zeros(threads, dtype=np.intc)
    _conv_winograd_shared(x, u, out, rows, hb, v, m, tb, y, np.arange(c, dtype=np.intp) * tball, ep, mode, bad)
    return not bad.any()


# The weight gradient by the same transforms: Y = AT [U * V] AT^T is linear
# in U, so dU = sum over tiles of (A dY A^T) * V (A = AT^T, dY a 2x2 block of
# dout), 16 products reduced over the tiles, and dw = G^T dU G. The products
# run on the direct weight gradient's register tile (_weight_tile): a
# channel's row of V plays a tap, and the transformed dout D lies tile by
# tile, its channels side by side, as that tile reads dout.
cdef void _winograd_dout(const floating[:, :, :, ::1] dout, Py_ssize_t g0, Py_ssize_t g1,
                         floating* d, Py_ssize_t FP, Py_ssize_t plane) noexcept nogil:
    """d[k * plane + t * FP + f] = (A dY A^T)[k // 4, k % 4] for the 2x2 block dY of
    channel f of dout at tile t of tile rows g0 <= g < g1 of the batch (as
    _winograd_input's). Channels innermost: each of the 16 rows of a tile is
    written contiguously."""
    cdef Py_ssize_t F = dout.shape[1], H = dout.shape[2], W = dout.shape[3]
    cdef Py_ssize_t TH = H // 2, TW = W // 2, HW = H * W
    cdef Py_ssize_t g, n, th, tw, f
    cdef const floating* src
    cdef floating* dst
    cdef floating a0, a1, b0, b1, p0, p1, m0, m1
    for g in range(g0, g1):
        n = g // TH
        th = g - n * TH
        for tw in range(TW):
            src = &dout[n, 0, 2 * th, 2 * tw]
            dst = d + ((g - g0) * TW + tw) * FP
            for f in range(F):
                # A down the two rows y0 = (a0, a1), y1 = (b0, b1): y0, y0 + y1,
                # y0 - y1, -y1; then the same along each of those four rows
                a0 = src[f * HW]
                a1 = src[f * HW + 1]
                b0 = src[f * HW + W]
                b1 = src[f * HW + W + 1]
                p0 = a0 + b0
                p1 = a1 + b1
                m0 = a0 - b0
                m1 = a1 - b1
                dst[f] = a0
                dst[plane + f] = a0 + a1
                dst[2 * plane + f] = a0 - a1
                dst[3 * plane + f] = -a1
                dst[4 * plane + f] = p0
                dst[5 * plane + f] = p0 + p1
                dst[6 * plane + f] = p0 - p1
                dst[7 * plane + f] = -p1
                dst[8 * plane + f] = m0
                dst[9 * plane + f] = m0 + m1
                dst[10 * plane + f] = m0 - m1
                dst[11 * plane + f] = -m1
                dst[12 * plane + f] = -b0
                dst[13 * plane + f] = -b0 - b1
                dst[14 * plane + f] = b1 - b0
                dst[15 * plane + f] = b1


def _conv_winograd_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dout,
                          Py_ssize_t RB, floating[::1] hb, floating[:, ::1] v, floating[:, ::1] d,
                          floating[:, ::1] du, Py_ssize_t TB, const Py_ssize_t[::1] offsets):
    """The loop of conv_winograd_backward_weight: du[k] (CP, FP) += V_k @ D_k
    over blocks of RB tile rows of the batch."""
    cdef Py_ssize_t CP = offsets.shape[0], FP = (du.shape[1] - PLANE_PAD) // offsets.shape[0]
    cdef Py_ssize_t TW = x.shape[3] // 2, rows = x.shape[0] * (x.shape[2] // 2)
    cdef Py_ssize_t block, g0, g1, k, k0, f0, tk, tf
    with nogil:
        for block in range((rows + RB - 1) // RB):
            g0 = block * RB
            g1 = min(g0 + RB, rows)
            _winograd_input(x, g0, g1, &hb[0], &v[0, 0], TB, v.shape[1], 0, x.shape[1])
            _winograd_dout(dout, g0, g1, &d[0, 0], FP, d.shape[1])
            for k in range(16):
                if WIDE_TILES:
                    for k0 in range(0, CP, 8):          # literal steps KB, VL (checked at import)
                        for f0 in range(0, FP, 32):
                            _weight_tile(&v[k, 0], &d[k, 0], &du[k, 0], &offsets[0], (g1 - g0) * TW, FP, k0, f0)
                else:
                    for tk in range(CP // KB):
                        for tf in range(FP // VL):
                            _weight_tile(&v[k, 0], &d[k, 0], &du[k, 0], &offsets[0], (g1 - g0) * TW, FP,
                                         tk * KB, tf * VL)


cdef void _g_adjoint(const floating* du, Py_ssize_t stride, floating* g) noexcept nogil:
    """g (3x3, row-major) = G^T dU G for dU[k // 4, k % 4] = du[k * stride]: the
    adjoint of _g_transform, G^T's rows written out: (1, 1/2, 1/2, 0),
    (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1)."""
    cdef floating t[3][4]
    cdef floating half
    cdef Py_ssize_t j, a
    for j in range(4):                          # G^T down the columns of dU
        half = (du[(4 + j) * stride] + du[(8 + j) * stride]) * <floating>0.5
        t[0][j] = du[j * stride] + half
        t[1][j] = (du[(4 + j) * stride] - du[(8 + j) * stride]) * <floating>0.5
        t[2][j] = half + du[(12 + j) * stride]
    for a in range(3):                          # then G along each row
        half = (t[a][1] + t[a][2]) * <floating>0.5
        g[3 * a] = t[a][0] + half
        g[3 * a + 1] = (t[a][1] - t[a][2]) * <floating>0.5
        g[3 * a + 2] = half + t[a][3]


def _winograd_weight_gradient(const floating[:, ::1] du, floating[:, :, :, ::1] dw):
    """dw[f, c] = G^T dU[c, f] G for du: (16, CP*FP + PLANE_PAD)."""
    cdef Py_ssize_t F = dw.shape[0], C = dw.shape[1], f, c
    cdef Py_ssize_t FP = (du.shape[1] - PLANE_PAD) // _round_up(dw.shape[1], KB)
    with nogil:
        for f in range(F):
            for c in range(C):
                _g_adjoint(&du[0, c * FP + f], du.shape[1], &dw[f, c, 0, 0])


def conv_winograd_backward_weight(x, dout):
    """Weight gradient of the stride-1, padding-1 3x3 convolution over a
    chunk of images, by Winograd's F(2x2, 3x3).

    x: (N, C, H, W) with H and W even, dout: (N, F, H, W) -> dw: (F, C, 3, 3),
    summed over the chunk. Single-threaded, without the GIL (as
    conv_direct_backward_weight).
    """
    x, dout = np.ascontiguousarray(x), np.ascontiguousarray(dout)
    c = x.shape[1]
    f = dout.shape[1]
    fp, cp = _round_up(f, VL), _round_up(c, KB)
    rows, tb = _winograd_blocks(x.shape, fp, False)
    v, hb = _winograd_scratch(x.shape, tb, x.dtype)
    d = np.zeros((16, tb * fp + PLANE_PAD), dtype=x.dtype)     # zero: the padding channels f >= F stay zero
    du = np.zeros((16, cp * fp + PLANE_PAD), dtype=x.dtype)
    offsets = np.zeros(cp, dtype=np.intp)              # padding channels read row 0; dropped below
    offsets[:c] = np.arange(c) * tb
    _conv_winograd_weight(x, dout, rows, hb[0], v, d, du, tb, offsets)
    dw = np.empty((f, c, 3, 3), dtype=x.dtype)
    _winograd_weight_gradient(du, dw)
    return dw


# ---------------------------------------------------------------- max pool
cdef inline void _window_inside(const floating* plane, Py_ssize_t W, Py_ssize_t h0, Py_ssize_t w0,
                                Py_ssize_t kh, Py_ssize_t kw, floating* best_out,
                                long long* k_out) noexcept nogil:
    """The winner of a window that lies inside the image, top-left (h0, w0),
    and its index KH*KW-flat. Selects instead of branches: the winner is
    data-dependent, so branches mispredict (2x2 pooling of a (128, 16, 32, 32)
    batch: 4.2 ms with branches, 1.8 ms with selects)."""
    cdef floating best = plane[h0 * W + w0], v
    cdef long long best_k = 0, k
    cdef Py_ssize_t i, j
    for i in range(kh):
        for j in range(kw):
            v = plane[(h0 + i) * W + w0 + j]
            k = i * kw + j
            # strict >: the first maximum wins; v != v: a NaN wins (as PyTorch)
            best_k = k if (v > best or v != v) else best_k
            best = v if (v > best or v != v) else best
    best_out[0] = best
    k_out[0] = best_k


cdef inline void _window_checked(const floating* plane, Py_ssize_t H, Py_ssize_t W, Py_ssize_t h0,
                                 Py_ssize_t w0, Py_ssize_t kh, Py_ssize_t kw, floating* best_out,
                                 long long* k_out) noexcept nogil:
    """_window_inside for a window that hangs over the padding, which never wins."""
    cdef floating best = 0, v
    cdef long long best_k = 0
    cdef Py_ssize_t i, j
    cdef bint found = False
    for i in range(max(0, -h0), min(kh, H - h0)):
        for j in range(max(0, -w0), min(kw, W - w0)):
            v = plane[(h0 + i) * W + w0 + j]
            # As PyTorch: strict > keeps the first maximum; a NaN
            # always wins (so the last NaN, where there are several).
            if not found or v > best or v != v:
                best = v
                best_k = i * kw + j
                found = True
    best_out[0] = best
    k_out[0] = best_k


# 3x3 pooling with stride 2, the ImageNet ResNets' (after their stem), on
# float32 maps of even size with padding 1: their 8x8 outputs make rows
# too short for vectorised row loops, and the general loop's
# compare-and-select chains compiled to branches that the random data
# mispredicts (perf: vcomiss + jp). Here two loops over the whole plane
# that the compiler vectorises: each row's windows of three columns, then
# the three rows of each output row (the scan's rule applies to rows first:
# a window's winner is the winner of its three row winners). A window over
# the padding reads its edge pixel twice instead (the duplicate sits next to
# its original in the scan order and the winner is kept as its index in the
# window), so the maximum, the first of tied maxima and the last NaN come
# out as _window_inside's. (128, 64, 16, 16) -> 8x8, 2 threads, AMD Zen 4:
# 7.6 ms (general loop) -> 1.4; PyTorch 8.5. Other shapes and float64 take
# the general loop.
cdef extern from *:
    """
    #include <stdlib.h>
    /* Window q of row r reads columns 2q-1, 2q, 2q+1, at flat positions
       2p-1, 2p, 2p+1 of p = r*OW + q, so one loop covers the plane; its
       column-0 windows (column -1 is padding: column 0 read twice) are redone
       after it. -> 0 (nothing written) when the scratch rows cannot be had. */
    #define MINIRES_PICK3(bv, bj, a, b, c, ja) {                                                     \
        bv = a; bj = ja;                                                                            \
        int m1 = (b > bv) | (b != b); bv = m1 ? b : bv; bj = m1 ? 1 : bj;                           \
        int m2 = (c > bv) | (c != c); bv = m2 ? c : bv; bj = m2 ? 2 : bj;                           \
    }
    static int minires_pool3s2_even_f(const float* x, Py_ssize_t H, Py_ssize_t W, float* out,
                                      long long* argmax) {
        Py_ssize_t OH = H / 2, OW = W / 2, P = H * OW;
        float* hv = (float*)malloc(P * sizeof(float));
        int* hj = (int*)malloc(P * sizeof(int));
        if (hv == NULL || hj == NULL) { free(hv); free(hj); return 0; }
        for (Py_ssize_t p = 1; p < P; p++)
            MINIRES_PICK3(hv[p], hj[p], x[2 * p - 1], x[2 * p], x[2 * p + 1], 0)
        for (Py_ssize_t r = 0; r < H; r++) {
            Py_ssize_t p = r * OW;
            MINIRES_PICK3(hv[p], hj[p], x[2 * p], x[2 * p], x[2 * p + 1], 1)
        }
        for (Py_ssize_t oh = 0; oh < OH; oh++) {
            /* rows 2oh-1, 2oh, 2oh+1; row -1 is padding: row 0 read twice */
            Py_ssize_t r0 = oh > 0 ? 2 * oh - 1 : 0, i0 = oh > 0 ? 0 : 1;
            const float* v0 = hv + r0 * OW; const float* v1 = hv + 2 * oh * OW; const float* v2 = v1 + OW;
            const int* j0 = hj + r0 * OW; const int* j1 = hj + 2 * oh * OW; const int* j2 = j1 + OW;
            for (Py_ssize_t q = 0; q < OW; q++) {
                float bv = v0[q], b = v1[q], c = v2[q];
                long long bk = i0 * 3 + j0[q];
                int m1 = (b > bv) | (b != b); bv = m1 ? b : bv; bk = m1 ? 3 + j1[q] : bk;
                int m2 = (c > bv) | (c != c); bv = m2 ? c : bv; bk = m2 ? 6 + j2[q] : bk;
                out[oh * OW + q] = bv;
                argmax[oh * OW + q] = bk;
            }
        }
        free(hv); free(hj);
        return 1;
    }
    """
    bint _pool3s2_even_f "minires_pool3s2_even_f"(const float* x, Py_ssize_t H, Py_ssize_t W, float* out,
                                                  long long* argmax) noexcept nogil


def _max_pool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                      long long[:, :, :, ::1] argmax,
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    # Windows of output columns [lo, hi) lie inside the image horizontally;
    # the rest, and rows whose windows reach the padding, take the checked loop.
    cdef Py_ssize_t lo = min(OW, (pw + sw - 1) // sw)
    cdef Py_ssize_t hi = lo if W + pw < kw else max(lo, min(OW, (W + pw - kw) // sw + 1))
    cdef Py_ssize_t nc, n, c, oh, ow, h0
    cdef const floating* plane
    if kh == kw == sh == sw == 2 and ph == pw == 0:
        with nogil:
            _max_pool_2x2(x, out, argmax, nthreads)
        return
    cdef bint pool3s2 = kh == kw == 3 and sh == sw == 2 and ph == pw == 1 and H % 2 == 0 and W % 2 == 0
    with nogil:
        for nc in prange(N * C, num_threads=nthreads, schedule="static"):
            n = nc // C
            c = nc % C
            plane = &x[n, c, 0, 0]
            if floating is float:
                if pool3s2 and _pool3s2_even_f(plane, H, W, &out[n, c, 0, 0], &argmax[n, c, 0, 0]):
                    continue
            for oh in range(OH):
                h0 = oh * sh - ph
                for ow in range(OW):
                    if h0 >= 0 and h0 + kh <= H and lo <= ow < hi:
                        _window_inside(plane, W, h0, ow * sw - pw, kh, kw, &out[n, c, oh, ow],
                                       &argmax[n, c, oh, ow])
                    else:
                        _window_checked(plane, H, W, h0, ow * sw - pw, kh, kw, &out[n, c, oh, ow],
                                        &argmax[n, c, oh, ow])


cdef inline void _pool_2x2_row(const floating* r0, const floating* r1, floating* o,
                               long long* k, Py_ssize_t OW) noexcept nogil:
    """o[ow], k[ow]: the winner of window (r0[2ow], r0[2ow+1], r1[2ow], r1[2ow+1])
    and its index 0-3, by the rule of _window_inside."""
    cdef Py_ssize_t ow
    cdef floating best, v
    cdef long long bk
    cdef bint win
    for ow in range(OW):
        best = r0[2 * ow]
        bk = 0
        v = r0[2 * ow + 1]
        win = v > best or v != v
        bk = 1 if win else bk
        best = v if win else best
        v = r1[2 * ow]
        win = v > best or v != v
        bk = 2 if win else bk
        best = v if win else best
        v = r1[2 * ow + 1]
        win = v > best or v != v
        bk = 3 if win else bk
        best = v if win else best
        o[ow] = best
        k[ow] = bk


cdef void _max_pool_2x2(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                        long long[:, :, :, ::1] argmax, int nthreads) noexcept nogil:
    """_window_inside for the commonest pool, 2x2 with stride 2: the four taps
    written out, so that the compiler vectorises along the row (2x2 pooling of a
    (128, 16, 32, 32) batch: 4.8 ms to 0.25 ms, AMD Zen 4)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t nc, n, c, oh
    for nc in prange(N * C, num_threads=nthreads, schedule="static"):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            _pool_2x2_row(&x[n, c, 2 * oh, 0], &x[n, c, 2 * oh + 1, 0], &out[n, c, oh, 0],
                          &argmax[n, c, oh, 0], OW)


def max_pool_forward(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ph, Py_ssize_t pw):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, OH, OW). See the reference."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    _max_pool_forward(x, out, argmax, kh, kw, sh, sw, ph, pw, _threads(x.size))
    return out, argmax


def _max_pool_backward(const floating[:, :, :, ::1] dout, const long long[:, :, :, ::1] argmax,
                       floating[:, :, :, ::1] dx,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t ph, Py_ssize_t pw, int nthreads):
    cdef Py_ssize_t C = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t nc, n, c, oh, ow, k
    with nogil:
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
    _max_pool_backward(dout, argmax, dx, kh, kw, sh, sw, ph, pw, _threads(dx.size))
    return dx


# ---------------------------------------------------------------- batchnorm
# Per channel c over its M = N*H*W values. Forward caches only mean and rstd
# (llm.c's layernorm does the same): xhat is cheap to recompute in backward.
# Sums run in double over LANES independent partial sums, in blocks of
# BLOCK values: one running sum waits on every add (and the compiler may not
# reorder float additions), so it could not use the vector units, and the
# compiler vectorises only loops whose trip count it knows (3x faster).
cdef enum:
    LANES = 8
    BLOCK = 64


cdef inline double _row_sum(const floating* r, Py_ssize_t n) noexcept nogil:
    """sum of r[0:n]."""
    cdef double acc[LANES]
    cdef double s = 0
    cdef Py_ssize_t b, p, q, tb, tp, full = n - n % BLOCK
    for q in range(LANES):
        acc[q] = 0
    for tb in range(full // BLOCK):
        b = tb * BLOCK
        for tp in range(BLOCK // LANES):
            p = tp * LANES
            for q in range(LANES):
                acc[q] += r[b + p + q]
    for p in range(full, n):
        s += r[p]
    for q in range(LANES):
        s += acc[q]
    return s


cdef inline double _row_sq_dev(const floating* r, Py_ssize_t n, double m) noexcept nogil:
    """sum of (r[0:n] - m)**2."""
    cdef double acc[LANES]
    cdef double s = 0, d
    cdef Py_ssize_t b, p, q, tb, tp, full = n - n % BLOCK
    for q in range(LANES):
        acc[q] = 0
    for tb in range(full // BLOCK):
        b = tb * BLOCK
        for tp in range(BLOCK // LANES):
            p = tp * LANES
            for q in range(LANES):
                d = r[b + p + q] - m
                acc[q] += d * d
    for p in range(full, n):
        d = r[p] - m
        s += d * d
    for q in range(LANES):
        s += acc[q]
    return s


cdef inline floating _bn_value(floating x, floating mf, floating scale, floating bias) noexcept nogil:
    """One normalised value. Forward and the fused ReLU's backward mask both call
    this, so that they see the very same float."""
    return (x - mf) * scale + bias


cdef inline floating _masked(floating d, floating x, floating mf, floating scale,
                             floating bias) noexcept nogil:
    """0 where the fused BN + ReLU output was <= 0, else d (a NaN output passes d, as in PyTorch)."""
    cdef floating zero = 0      # typed: a bare 0 would compare in double
    return zero if _bn_value(x, mf, scale, bias) <= zero else d


cdef inline floating _grad_in(floating d, floating x, floating mf, floating scale, floating bias,
                              bint relu) noexcept nogil:
    """The gradient that reaches the normalisation: d, masked as in _masked for a fused ReLU."""
    return _masked(d, x, mf, scale, bias) if relu else d


cdef inline void _row_grad_sums(const floating* dr, const floating* xr, Py_ssize_t n, double m,
                                bint relu, floating mf, floating scale, floating bias,
                                double* sd, double* sdx) noexcept nogil:
    """sd += sum of g; sdx += sum of g * (xr - m), over [0, n), where g = dr, or for a
    fused ReLU, dr masked to 0 where the forward output (xr - mf) * scale + bias was <= 0."""
    cdef double a1[LANES]
    cdef double a2[LANES]
    cdef floating g[BLOCK]      # one block of g: masking and summing in separate simple loops vectorise
    cdef floating gp
    cdef Py_ssize_t b, p, q, tb, tp, full = n - n % BLOCK
    for q in range(LANES):
        a1[q] = 0
        a2[q] = 0
    for tb in range(full // BLOCK):
        b = tb * BLOCK
        if relu:
            for p in range(BLOCK):
                g[p] = _masked(dr[b + p], xr[b + p], mf, scale, bias)
        else:
            for p in range(BLOCK):
                g[p] = dr[b + p]
        for tp in range(BLOCK // LANES):
            p = tp * LANES
            for q in range(LANES):
                a1[q] += g[p + q]
                a2[q] += g[p + q] * (xr[b + p + q] - m)
    for p in range(full, n):
        gp = _grad_in(dr[p], xr[p], mf, scale, bias, relu)
        sd[0] += gp
        sdx[0] += gp * (xr[p] - m)
    for q in range(LANES):
        sd[0] += a1[q]
        sdx[0] += a2[q]


def _bn_stats(const floating[:, :, ::1] x, double[::1] mean, double[::1] var,
              int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n
    cdef double s, m
    with nogil:
        for c in prange(C, num_threads=nthreads, schedule="static"):
            s = 0
            for n in range(N):
                s = s + _row_sum(&x[n, c, 0], P)
            m = s / (N * P)
            s = 0
            for n in range(N):        # two passes: exact even when |mean| >> std
                s = s + _row_sq_dev(&x[n, c, 0], P, m)
            mean[c] = m
            var[c] = s / (N * P)


def _bn_apply(const floating[:, :, ::1] x, floating[:, :, ::1] out, const double[::1] mean,
              const double[::1] rstd, const floating[::1] gamma, const floating[::1] beta,
              bint relu, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, p
    cdef floating scale, mf, bias, v
    with nogil:
        for c in prange(C, num_threads=nthreads, schedule="static"):
            # (x - mean) * scale + beta, not x * scale + (beta - mean * scale): the
            # latter cancels badly in float32 when scale is large (tiny variance)
            scale = <floating>(gamma[c] * rstd[c])
            mf = <floating>mean[c]
            bias = beta[c]
            for n in range(N):
                for p in range(P):
                    v = _bn_value(x[n, c, p], mf, scale, bias)
                    out[n, c, p] = (0 if v <= 0 else v) if relu else v     # <=: NaN stays NaN


# Small maps (8x8 and below; an ImageNet ResNet's 4x4, 2x2 and 1x1 on 32x32
# images): a channel's values come P = H*W at a time, strided by C*P, so the loops above
# spend their time on calls and cache misses (2048 channels at 1x1, batch
# 128: 7.6 ms forward + backward where PyTorch takes 0.6). These kernels see
# x as rows (N, C*P) instead: each column j (channel j // P) is summed down
# the rows, a contiguous vector at a time, and the per-channel constants are
# spread over the columns first. Threads take blocks of columns.
cdef enum:
    COLS = 256      # columns per thread block


cdef inline Py_ssize_t _block_end(Py_ssize_t jb, Py_ssize_t J) noexcept nogil:
    """One past the last column of block jb."""
    return min(J, (jb + 1) * COLS)


cdef inline void _zero(double* a, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(j0, j1):
        a[j] = 0


def _bn_col_sums(const floating[:, ::1] x, const double[::1] centre, double[::1] s1, double[::1] s2,
                 int nthreads):
    """Per column j: s1[j] = sum of x[:, j]; with centre (per column), also
    s2[j] = sum of (x[:, j] - centre[j])**2 (skipped when centre is empty)."""
    cdef Py_ssize_t N = x.shape[0], J = x.shape[1]
    cdef Py_ssize_t jb, j, n, j1
    cdef double d
    cdef bint second = centre.shape[0] > 0
    with nogil:
        for jb in prange((J + COLS - 1) // COLS, num_threads=nthreads, schedule="static"):
            j1 = _block_end(jb, J)
            _zero(&s1[0], jb * COLS, j1)
            _zero(&s2[0], jb * COLS, j1)
            for n in range(N):
                if second:
                    for j in range(jb * COLS, j1):
                        d = x[n, j] - centre[j]
                        s2[j] += d * d
                else:
                    for j in range(jb * COLS, j1):
                        s1[j] += x[n, j]


def _bn_col_apply(const floating[:, ::1] x, floating[:, ::1] out, const floating[::1] mf,
                  const floating[::1] scale, const floating[::1] bias, bint relu, int nthreads):
    cdef Py_ssize_t N = x.shape[0], J = x.shape[1]
    cdef Py_ssize_t jb, j, n, j1
    cdef floating v
    with nogil:
        for jb in prange((J + COLS - 1) // COLS, num_threads=nthreads, schedule="static"):
            j1 = _block_end(jb, J)
            for n in range(N):
                for j in range(jb * COLS, j1):
                    v = _bn_value(x[n, j], mf[j], scale[j], bias[j])
                    out[n, j] = (0 if v <= 0 else v) if relu else v


def _bn_col_grad_sums(const floating[:, ::1] dout, const floating[:, ::1] x, const double[::1] m,
                      const floating[::1] mf, const floating[::1] scale, const floating[::1] bias,
                      bint relu, double[::1] sd, double[::1] sdx, int nthreads):
    """Per column: sd = sum of g, sdx = sum of g * (x - m), g = dout (masked for a fused ReLU)."""
    cdef Py_ssize_t N = x.shape[0], J = x.shape[1]
    cdef Py_ssize_t jb, j, n, j1
    cdef floating g
    with nogil:
        for jb in prange((J + COLS - 1) // COLS, num_threads=nthreads, schedule="static"):
            j1 = _block_end(jb, J)
            _zero(&sd[0], jb * COLS, j1)
            _zero(&sdx[0], jb * COLS, j1)
            for n in range(N):
                if relu:        # two loops: the one without the mask then vectorises (gcc 12 keeps the masked one scalar)
                    for j in range(jb * COLS, j1):
                        g = _masked(dout[n, j], x[n, j], mf[j], scale[j], bias[j])
                        sd[j] += g
                        sdx[j] += g * (x[n, j] - m[j])
                else:
                    for j in range(jb * COLS, j1):
                        g = dout[n, j]
                        sd[j] += g
                        sdx[j] += g * (x[n, j] - m[j])


def _bn_col_dx(const floating[:, ::1] dout, const floating[:, ::1] x, floating[:, ::1] dx,
               const floating[::1] a, const floating[::1] k1, const floating[::1] b,
               const floating[::1] mf, const floating[::1] scale, const floating[::1] bias,
               bint training, bint relu, int nthreads):
    """dx = a * (g - k1) - b * (x - mf) per column (training), a * g (evaluation)."""
    cdef Py_ssize_t N = x.shape[0], J = x.shape[1]
    cdef Py_ssize_t jb, j, n, j1
    cdef floating g
    with nogil:
        for jb in prange((J + COLS - 1) // COLS, num_threads=nthreads, schedule="static"):
            j1 = _block_end(jb, J)
            for n in range(N):
                if relu:        # separate loops, as in _bn_col_grad_sums
                    for j in range(jb * COLS, j1):
                        g = _masked(dout[n, j], x[n, j], mf[j], scale[j], bias[j])
                        if training:
                            dx[n, j] = a[j] * (g - k1[j]) - b[j] * (x[n, j] - mf[j])
                        else:   # no x term: an inf in x cannot make 0 * inf
                            dx[n, j] = a[j] * g
                elif training:
                    for j in range(jb * COLS, j1):
                        dx[n, j] = a[j] * (dout[n, j] - k1[j]) - b[j] * (x[n, j] - mf[j])
                else:
                    for j in range(jb * COLS, j1):
                        dx[n, j] = a[j] * dout[n, j]


# Planes of up to this many values (H*W) take the column kernels. Forward +
# backward, batch 128, 2 threads, AMD EPYC (Zen 4), ms (per channel / columns):
# 2048 channels at 1x1 7.6 / 0.31; 1024 at 2x2 4.4 / 0.63; 512 at 4x4 7.2 /
# 0.8; 16 at 32x32 2.3 / 3.5. 8x8 planes go per channel: with the fused ReLU
# (every BN of the ResNets' last stage) the columns' masked backward loop
# stays scalar, 64 channels at 8x8: 0.57 / 2.77 ms, 256 channels 2.35 / 11.2.
SMALL_PLANE = 32


def _per_column(values, p, dtype):
    """A per-channel array (C,) spread over the C*P columns of the row view."""
    return np.ascontiguousarray(np.repeat(np.asarray(values).astype(dtype, copy=False), p))


def _per_channel(col_sums, p):
    return col_sums.reshape(-1, p).sum(axis=1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, bint training, double eps,
                      bint relu=False):
    """x: (N, C, H, W) -> (out, mean (C,), var (C,)); mean and var are float64.

    training: batch statistics (biased variance); otherwise the running ones.
    relu: apply max(out, 0) in the same pass (a fused BN + ReLU).
    The running statistics are not updated here (the caller does it).
    """
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    p = x3.shape[2]
    if training:
        mean = np.empty(c)
        var = np.empty(c)
        if p <= SMALL_PLANE:
            _bn_stats_columns(x3.reshape(n, -1), p, mean, var)
        else:
            _bn_stats(x3, mean, var, _threads(x.size))
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    return batchnorm_apply(x, mean, 1.0 / np.sqrt(var + eps), gamma, beta, relu), mean, var


def batchnorm_apply(x, mean, rstd, gamma, beta, bint relu=False):
    """x: (N, C, H, W), mean, rstd: (C,) float64 -> (x - mean) * (gamma * rstd) + beta,
    max(., 0) if relu: batchnorm_forward's output for these statistics, bit for bit."""
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    p = x3.shape[2]
    out = np.empty(x.shape, dtype=x.dtype)
    g = np.ascontiguousarray(gamma, dtype=x.dtype)
    b = np.ascontiguousarray(beta, dtype=x.dtype)
    mean, rstd = np.ascontiguousarray(mean, dtype=np.float64), np.ascontiguousarray(rstd, dtype=np.float64)
    if p <= SMALL_PLANE:
        mf, scale, bias = _column_constants(mean, rstd, g, b, p, x.dtype)
        _bn_col_apply(x3.reshape(n, -1), out.reshape(n, -1), mf, scale, bias, relu, _threads(x.size))
    else:
        _bn_apply(x3, out.reshape(n, c, -1), mean, rstd, g, b, relu, _threads(x.size))
    return out


def _bn_stats_columns(x2, p, mean, var):
    """mean and biased var per channel of the row view x2 (N, C*P), two passes as _bn_stats."""
    j = x2.shape[1]
    s1, s2 = np.empty(j), np.empty(j)
    _bn_col_sums(x2, np.empty(0), s1, s2, _threads(x2.size))
    mean[:] = _per_channel(s1, p) / (x2.shape[0] * p)
    _bn_col_sums(x2, np.repeat(mean, p), s1, s2, _threads(x2.size))
    var[:] = _per_channel(s2, p) / (x2.shape[0] * p)


def _column_constants(mean, rstd, g, b, p, dtype):
    """mf, scale, bias per column: the very floats _bn_apply computes per channel."""
    scale = (g.astype(np.float64) * rstd).astype(dtype)
    return (_per_column(mean.astype(dtype), p, dtype), _per_column(scale, p, dtype), _per_column(b, p, dtype))


def _bn_backward(const floating[:, :, ::1] dout, const floating[:, :, ::1] x,
                 floating[:, :, ::1] dx, const double[::1] mean, const double[::1] rstd,
                 const floating[::1] gamma, const floating[::1] beta, double[::1] dgamma,
                 double[::1] dbeta, bint training, bint relu, int nthreads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2]
    cdef Py_ssize_t c, n, p
    cdef double sd, sdx, k1, k2, g, m, r, M = N * P
    cdef floating a, b, k1f, mf, scale, bias, g2
    with nogil:
        for c in prange(C, num_threads=nthreads, schedule="static"):
            m = mean[c]
            r = rstd[c]
            g = gamma[c]
            mf = <floating>m                     # as in _bn_apply, for the ReLU mask
            scale = <floating>(gamma[c] * rstd[c])
            bias = beta[c]
            sd = 0
            sdx = 0
            for n in range(N):
                _row_grad_sums(&dout[n, c, 0], &x[n, c, 0], P, m, relu, mf, scale, bias, &sd, &sdx)
            sdx = sdx * r
            dbeta[c] = sd
            dgamma[c] = sdx
            # dx = g*r*(dout - mean(dout) - xhat*mean(dout*xhat)) in training, g*r*dout in eval
            k1 = sd / M if training else 0.0
            k2 = sdx / M if training else 0.0
            # the same as g*r*(dout - k1 - (x - m)*r*k2), with per-channel constants
            # folded so that the per-value work stays in x's precision
            a = <floating>(g * r)
            b = <floating>(g * r * r * k2)
            k1f = <floating>k1
            for n in range(N):
                if relu and training:
                    for p in range(P):
                        g2 = _masked(dout[n, c, p], x[n, c, p], mf, scale, bias)
                        dx[n, c, p] = a * (g2 - k1f) - b * (x[n, c, p] - mf)
                elif training:
                    for p in range(P):
                        dx[n, c, p] = a * (dout[n, c, p] - k1f) - b * (x[n, c, p] - mf)
                elif relu:      # evaluation: no x term, so an inf in x cannot make 0 * inf
                    for p in range(P):
                        dx[n, c, p] = a * _masked(dout[n, c, p], x[n, c, p], mf, scale, bias)
                else:
                    for p in range(P):
                        dx[n, c, p] = a * dout[n, c, p]


def batchnorm_backward(dout, x, mean, rstd, gamma, beta, bint training, bint relu=False):
    """-> dx (N, C, H, W), dgamma (C,), dbeta (C,) in x's dtype.

    relu: the backward of a fused BN + ReLU (forward with relu=True); dout
    is masked where the output was <= 0, recomputed from x, so that the
    output need not be kept. beta is used only for that mask.
    """
    x = np.ascontiguousarray(x)
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    n, c = x.shape[0], x.shape[1]
    dx = np.empty(x.shape, dtype=x.dtype)
    dgamma, dbeta = np.empty(c), np.empty(c)
    g = np.ascontiguousarray(gamma, dtype=x.dtype)
    b = np.ascontiguousarray(beta, dtype=x.dtype)
    p = x[0, 0].size
    if p <= SMALL_PLANE:
        _bn_backward_columns(dout.reshape(n, -1), x.reshape(n, -1), dx.reshape(n, -1), p, mean, rstd,
                             g, b, dgamma, dbeta, training, relu)
        return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
    _bn_backward(dout.reshape(n, c, -1), x.reshape(n, c, -1), dx.reshape(n, c, -1),
                 mean, rstd, g, b, dgamma, dbeta, training, relu, _threads(x.size))
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def _bn_backward_columns(d2, x2, dx2, p, mean, rstd, g, b, dgamma, dbeta, training, relu):
    """_bn_backward on the row view (N, C*P) of small planes: the same constants, per column."""
    dtype, m_count = x2.dtype, x2.shape[0] * p
    mf, scale, bias = _column_constants(mean, rstd, g, b, p, dtype)
    sd, sdx = np.empty(x2.shape[1]), np.empty(x2.shape[1])
    _bn_col_grad_sums(d2, x2, np.repeat(mean, p), mf, scale, bias, relu, sd, sdx, _threads(x2.size))
    dbeta[:] = _per_channel(sd, p)
    dgamma[:] = _per_channel(sdx, p) * rstd
    k1 = dbeta / m_count if training else np.zeros_like(dbeta)
    k2 = dgamma / m_count if training else np.zeros_like(dgamma)
    gd = g.astype(np.float64)
    _bn_col_dx(d2, x2, dx2, _per_column((gd * rstd).astype(dtype), p, dtype), _per_column(k1.astype(dtype), p, dtype),
               _per_column((gd * rstd * rstd * k2).astype(dtype), p, dtype), mf, scale, bias, training, relu,
               _threads(x2.size))


# ---------------------------------------------------------------- relu
def _relu_loop(const floating[::1] x, floating[::1] out, int nthreads):
    cdef Py_ssize_t i
    with nogil:
        for i in prange(x.shape[0], num_threads=nthreads, schedule="static"):
            out[i] = 0 if x[i] <= 0 else x[i]      # <=: NaN stays NaN, as in PyTorch


def _relu_grad_loop(const floating[::1] dout, const floating[::1] out, floating[::1] dx,
                   int nthreads):
    cdef Py_ssize_t i
    with nogil:
        for i in prange(dout.shape[0], num_threads=nthreads, schedule="static"):
            dx[i] = 0 if out[i] <= 0 else dout[i]  # a NaN output passes the gradient, as in PyTorch


def _add_relu_loop(const floating[::1] a, const floating[::1] b, floating[::1] out,
                      int nthreads):
    cdef Py_ssize_t i
    cdef floating v
    with nogil:
        for i in prange(a.shape[0], num_threads=nthreads, schedule="static"):
            v = a[i] + b[i]
            out[i] = 0 if v <= 0 else v


def add_relu(a, b):
    """max(a + b, 0) for two arrays of one shape, in one parallel pass."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b, dtype=a.dtype)
    out = np.empty(a.shape, dtype=a.dtype)
    _add_relu_loop(a.reshape(-1), b.reshape(-1), out.reshape(-1), _threads(a.size))
    return out


def relu(x):
    """max(x, 0), any shape, in one parallel pass."""
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, dtype=x.dtype)
    _relu_loop(x.reshape(-1), out.reshape(-1), _threads(x.size))
    return out


def relu_grad(dout, out):
    """The ReLU's gradient: 0 where out <= 0, else dout (so NaN outputs pass it); a new
    array (dout is never written)."""
    out = np.ascontiguousarray(out)
    dout = np.ascontiguousarray(dout, dtype=out.dtype)
    dx = np.empty(out.shape, dtype=out.dtype)
    _relu_grad_loop(dout.reshape(-1), out.reshape(-1), dx.reshape(-1), _threads(out.size))
    return dx


# ---------------------------------------------------------------- skinny matrix products
# One image's small maps make products with few columns: 512x4608 weights
# times a 4608x1 column (a 3x3 conv on a 1x1 map), 128x1152 times 1152x16
# (4x4). Such a product reads each weight once or a few times, so memory
# bounds it, and a single-threaded BLAS call leaves the other core's memory
# bandwidth unused (the ImageNet ResNets' weights, 47 and 94 MB, do not fit
# in the cache). Here the rows are shared between the threads. With few
# columns each output is a dot product over k, one vector of k at a time;
# with more, each row of a broadcasts its values over two vectors of
# columns of b at a time (as a BLAS kernel does), so that no vector lane
# idles. The vectors are the CPU's: 16 floats with AVX-512, 8 with AVX2,
# and the blocks shrink with them, so that the accumulators and the values
# they are multiplied with fit in the registers (16-float vectors on AVX2
# ran 15-60x slower than OpenBLAS: AMD Zen 3, 32x64 @ 64x1024 4.3 ms on one
# thread against 0.16). Without AVX, NumPy's matmul.
cdef extern from *:
    """
    #include <string.h>
    #if defined(__GNUC__) && defined(__AVX__)
    #define MINIRES_MM_BLOCKS 1
    typedef float minires_v8k __attribute__((vector_size(32), aligned(4)));
    typedef float minires_v4k __attribute__((vector_size(16), aligned(4)));
    #if defined(__AVX512F__)
    typedef minires_v16 minires_mmv;    /* from the weight-gradient tile above */
    #define MINIRES_MMVL 16
    #define MINIRES_DOT_COLS 4
    #define MINIRES_BCAST_ROWS 8
    #else
    typedef minires_v8k minires_mmv;
    #define MINIRES_MMVL 8
    #define MINIRES_DOT_COLS 2
    #define MINIRES_BCAST_ROWS 6
    #endif

    static inline __attribute__((always_inline)) float minires_hsum(minires_mmv v) {
        minires_v8k a;
        minires_v4k c, d;
        memcpy(&a, &v, 32);
    #if MINIRES_MMVL == 16
        minires_v8k b;
        memcpy(&b, (char*)&v + 32, 32); a += b;
    #endif
        memcpy(&c, &a, 16); memcpy(&d, (char*)&a + 16, 16); c += d;
        return (c[0] + c[2]) + (c[1] + c[3]);
    }

    /* out[r, g] = sum over k of a[r, k] * bT[g, k], for R <= 4 rows and G <= 4 columns */
    static inline __attribute__((always_inline)) void minires_dots(
            const float* a, Py_ssize_t lda, const float* bT, Py_ssize_t K, float* out, Py_ssize_t ldo,
            const int R, const int G) {
        minires_mmv acc[4][4];
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++) acc[r][g] = (minires_mmv){0};
        Py_ssize_t k = 0;
        for (; k + MINIRES_MMVL <= K; k += MINIRES_MMVL) {
            minires_mmv av[4], bv[4];
            for (int r = 0; r < R; r++) av[r] = *(const minires_mmv*)(a + r * lda + k);
            for (int g = 0; g < G; g++) bv[g] = *(const minires_mmv*)(bT + g * K + k);
            for (int r = 0; r < R; r++)
                for (int g = 0; g < G; g++) acc[r][g] += av[r] * bv[g];
        }
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++) {
                float s = minires_hsum(acc[r][g]);
                for (Py_ssize_t j = k; j < K; j++) s += a[r * lda + j] * bT[g * K + j];
                out[r * ldo + g] = s;
            }
    }
    #define MINIRES_DOTS(R, G) case 8 * R + G: minires_dots(a, lda, bT, K, out, ldo, R, G); return;

    /* out[r, j0:j0+VL*V] = sum over k of a[r, k] * bp[k, j0:j0+VL*V], for R <= 8
       rows; bp: b with its columns padded to NP, a multiple of the vector
       length VL; only the first `cols` columns are written */
    static inline __attribute__((always_inline)) void minires_bcast(
            const float* a, Py_ssize_t lda, const float* bp, Py_ssize_t NP, Py_ssize_t K,
            float* out, Py_ssize_t ldo, Py_ssize_t cols, const int R, const int V) {
        minires_mmv acc[8][2];
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++) acc[r][v] = (minires_mmv){0};
        for (Py_ssize_t k = 0; k < K; k++) {
            minires_mmv bv[2];
            for (int v = 0; v < V; v++) bv[v] = *(const minires_mmv*)(bp + k * NP + MINIRES_MMVL * v);
            for (int r = 0; r < R; r++)
                for (int v = 0; v < V; v++) acc[r][v] += a[r * lda + k] * bv[v];
        }
        for (int r = 0; r < R; r++) {
            if (cols == MINIRES_MMVL * V) {
                memcpy(out + r * ldo, &acc[r][0], sizeof(minires_mmv) * V);
            } else {
                float row[2 * MINIRES_MMVL];
                memcpy(row, &acc[r][0], sizeof(minires_mmv) * V);
                memcpy(out + r * ldo, row, cols * sizeof(float));
            }
        }
    }
    #define MINIRES_BCAST(R, V) case 8 * R + V: minires_bcast(a, lda, bp, NP, K, out, ldo, cols, R, V); return;
    #else
    #define MINIRES_MM_BLOCKS 0      /* NumPy's matmul: these are never called */
    #define MINIRES_MMVL 8
    #define MINIRES_DOT_COLS 4
    #define MINIRES_BCAST_ROWS 8
    static void minires_dots(const float* a, Py_ssize_t lda, const float* bT, Py_ssize_t K, float* out,
                             Py_ssize_t ldo, int R, int G) {
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++) {
                float s = 0;
                for (Py_ssize_t j = 0; j < K; j++) s += a[r * lda + j] * bT[g * K + j];
                out[r * ldo + g] = s;
            }
    }
    static void minires_bcast(const float* a, Py_ssize_t lda, const float* bp, Py_ssize_t NP, Py_ssize_t K,
                              float* out, Py_ssize_t ldo, Py_ssize_t cols, int R, int V) {
        for (int r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < cols; j++) {
                float s = 0;
                for (Py_ssize_t k = 0; k < K; k++) s += a[r * lda + k] * bp[k * NP + j];
                out[r * ldo + j] = s;
            }
    }
    #define MINIRES_DOTS(R, G)
    #define MINIRES_BCAST(R, V)
    #endif

    /* one block of rows and columns; each (R, G) its own copy, so that the
       accumulators stay in registers */
    static void minires_dot_block(const float* a, Py_ssize_t lda, const float* bT, Py_ssize_t K,
                                  float* out, Py_ssize_t ldo, int R, int G) {
        switch (8 * R + G) {
            MINIRES_DOTS(1, 1) MINIRES_DOTS(1, 2) MINIRES_DOTS(2, 1) MINIRES_DOTS(2, 2)
            MINIRES_DOTS(3, 1) MINIRES_DOTS(3, 2) MINIRES_DOTS(4, 1) MINIRES_DOTS(4, 2)
    #if MINIRES_DOT_COLS == 4
            MINIRES_DOTS(1, 3) MINIRES_DOTS(1, 4) MINIRES_DOTS(2, 3) MINIRES_DOTS(2, 4)
            MINIRES_DOTS(3, 3) MINIRES_DOTS(3, 4) MINIRES_DOTS(4, 3) MINIRES_DOTS(4, 4)
    #endif
        }
        minires_dots(a, lda, bT, K, out, ldo, R, G);
    }

    static void minires_bcast_block(const float* a, Py_ssize_t lda, const float* bp, Py_ssize_t NP,
                                    Py_ssize_t K, float* out, Py_ssize_t ldo, Py_ssize_t cols, int R, int V) {
        switch (8 * R + V) {
            MINIRES_BCAST(MINIRES_BCAST_ROWS, 1) MINIRES_BCAST(MINIRES_BCAST_ROWS, 2)
        }
        minires_bcast(a, lda, bp, NP, K, out, ldo, cols, R, V);    /* the last rows of a */
    }
    """
    void _dot_block "minires_dot_block"(const float* a, Py_ssize_t lda, const float* bT, Py_ssize_t K,
                                        float* out, Py_ssize_t ldo, int R, int G) noexcept nogil
    void _bcast_block "minires_bcast_block"(const float* a, Py_ssize_t lda, const float* bp, Py_ssize_t NP,
                                            Py_ssize_t K, float* out, Py_ssize_t ldo, Py_ssize_t cols,
                                            int R, int V) noexcept nogil
    enum:
        MM_VL "MINIRES_MMVL"                # floats per vector in the blocks
        DOT_COLS "MINIRES_DOT_COLS"         # columns of the product per block in the dot form (minires_dots' G)
        BCAST_ROWS "MINIRES_BCAST_ROWS"     # rows of a per block in the broadcast form
    int MM_BLOCKS "MINIRES_MM_BLOCKS"       # whether matmul runs these blocks (GCC/Clang, AVX or AVX-512)


cdef enum:
    DOT_ROWS = 4        # rows of a per block in the dot form (minires_dots' R)
    DOT_MAX_COLS = 7    # the dot form up to this many columns


def _matmul_dots(const float[:, ::1] a, const float[:, ::1] bT, float[:, ::1] out, int nthreads):
    """out = a @ bT.T, blocks of DOT_ROWS rows shared between the threads."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = bT.shape[0], blk, r0, jb, j0
    with nogil:
        for blk in prange((M + DOT_ROWS - 1) // DOT_ROWS, num_threads=nthreads, schedule="static"):
            r0 = blk * DOT_ROWS
            for jb in range((N + DOT_COLS - 1) // DOT_COLS):
                j0 = jb * DOT_COLS
                _dot_block(&a[r0, 0], K, &bT[j0, 0], K, &out[r0, j0], N,
                           min(DOT_ROWS, M - r0), min(DOT_COLS, N - j0))


def _matmul_bcast(const float[:, ::1] a, const float[:, ::1] bp, float[:, ::1] out, int nthreads):
    """out = a @ bp[:, :N], blocks of BCAST_ROWS rows and two vectors of columns shared between the threads."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], NP = bp.shape[1], N = out.shape[1], blk, r0, jb, j0
    with nogil:
        for blk in prange((M + BCAST_ROWS - 1) // BCAST_ROWS, num_threads=nthreads, schedule="static"):
            r0 = blk * BCAST_ROWS
            for jb in range((N + 2 * MM_VL - 1) // (2 * MM_VL)):
                j0 = jb * 2 * MM_VL
                _bcast_block(&a[r0, 0], K, &bp[0, j0], NP, K, &out[r0, j0], N, min(2 * MM_VL, N - j0),
                             min(BCAST_ROWS, M - r0), 1 if N - j0 <= MM_VL else 2)


def matmul(a, b, out, int threads=0):
    """out[...] = a @ b for a: (M, K), b: (K, N), out: (M, N), C-contiguous.

    For products with few columns (N up to a few dozen: one image's small
    maps), whose single-threaded BLAS call would leave the other cores idle;
    their rows are shared between the threads (threads: as im2col's, for
    the values read and written). Only
    float32 runs here; other dtypes, or non-contiguous arrays, take NumPy's
    matmul (the reference), as do builds without AVX (matmul_shares_rows()
    says which). Sums run in another order than BLAS's, so results differ
    from it in the last bits."""
    two_d = a.ndim == b.ndim == out.ndim == 2
    if two_d and (a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1])):
        raise ValueError(f"matmul: a {a.shape} @ b {b.shape} does not fit out {out.shape}")
    if not (MM_BLOCKS and two_d and a.dtype == b.dtype == out.dtype == np.float32 and a.flags.c_contiguous
            and out.flags.c_contiguous):
        np.matmul(a, b, out=out)
        return
    n, nthreads = b.shape[1], threads or _threads(a.size + b.size + out.size)
    if n <= DOT_MAX_COLS:
        _matmul_dots(a, np.ascontiguousarray(b.T), out, nthreads)
        return
    if n % MM_VL == 0 and b.flags.c_contiguous:
        bp = b
    else:
        bp = np.zeros((b.shape[0], -(-n // MM_VL) * MM_VL), dtype=np.float32)     # columns padded to whole vectors
        bp[:, :n] = b
    _matmul_bcast(a, bp, out, nthreads)


# ---------------------------------------------------------------- tap weights
def _tap_weights_loop(const floating[:, :, ::1] w3, floating[:, :, ::1] wt, const Py_ssize_t[::1] slot,
                      int nthreads):
    """wt[slot[t], f, c] = w3[f, c, t] for the taps t with slot[t] >= 0 ->
    how many values of w3 (all taps) are not finite."""
    cdef Py_ssize_t F = w3.shape[0], C = w3.shape[1], K = w3.shape[2], f, c, t, k
    cdef floating v
    cdef Py_ssize_t bad = 0
    with nogil:
        for f in prange(F, num_threads=nthreads, schedule="static"):
            for t in range(K):
                k = slot[t]
                if k >= 0:
                    for c in range(C):
                        v = w3[f, c, t]
                        wt[k, f, c] = v
                        bad += (v - v != 0)     # NaN for inf and NaN
                else:
                    for c in range(C):
                        v = w3[f, c, t]
                        bad += (v - v != 0)
    return bad


def _nonfinite_count(const floating[::1] a, int nthreads):
    cdef Py_ssize_t i, bad = 0
    with nogil:
        for i in prange(a.shape[0], num_threads=nthreads, schedule="static"):
            bad += (a[i] - a[i] != 0)
    return bad


def tap_weights(w, taps=None):
    """w: (F, C, KH, KW) -> (wt (T, F, C), finite): the (F, C) matrix of each
    kernel tap in taps (flat indices i*KW + j; all KH*KW by default) made
    contiguous, and whether every weight (of every tap) is finite, in one pass
    over w (the tap path needs both; NumPy took a gather per tap and a sum:
    512->512 3x3, 2.4M weights, 2 threads, AMD Zen 4: 1.77 -> 0.55 ms). A 1x1
    kernel's wt is w itself."""
    f, c, kh, kw = w.shape
    taps = range(kh * kw) if taps is None else taps
    w3 = np.ascontiguousarray(w).reshape(f, c, kh * kw)
    if kh * kw == 1 and list(taps) == [0]:
        return w3.reshape(1, f, c), _nonfinite_count(w3.reshape(-1), _threads(w3.size)) == 0
    slot = np.full(kh * kw, -1, dtype=np.intp)
    slot[np.asarray(taps, dtype=np.intp)] = np.arange(len(taps))
    wt = np.empty((len(taps), f, c), dtype=w3.dtype)
    return wt, _tap_weights_loop(w3, wt, slot, _threads(w3.size)) == 0


# ---------------------------------------------------------------- bias and ReLU
def _bias_relu_loop(floating[:, :, ::1] out, const floating[:, ::1] ep, int mode, int nthreads):
    cdef Py_ssize_t N = out.shape[0], F = out.shape[1], nf
    with nogil:
        for nf in prange(N * F, num_threads=nthreads, schedule="static"):
            _write_rows(&out[nf // F, nf % F, 0], &out[nf // F, nf % F, 0], out.shape[2], &ep[nf % F, 0], mode)


def bias_relu(out, bias, bint relu, int threads=0, bn=None):
    """In place: out += bias per channel, then an eval-mode batch norm when bn
    is (mean, rstd, gamma, beta, relu_before) (see _epilogue_constants), then max(out, 0) if
    relu (NaN stays NaN).

    out: (N, F, ...) C-contiguous, bias: (F,) or None. The epilogue of a
    convolution whose product came from BLAS. threads: as im2col's."""
    if bias is None and bn is None and not relu:
        return
    n, f = out.shape[0], out.shape[1]
    out3 = out.reshape(n, f, -1)
    threads = threads or _threads(out.size)
    ep, mode = _epilogue_constants(f, out.dtype, bias, bn)
    if bn is None or out3.shape[2] > SMALL_PLANE:
        _bias_relu_loop(out3, ep, mode | EP_RELU * relu, threads)
        return
    # Small maps: a loop per channel's few values would be calls, not work; the
    # bias (and a ReLU before the batch norm) first, then the batch norm's own
    # kernel for such maps, in place.
    if bias is not None or mode & EP_RELU_FIRST:
        _bias_relu_loop(out3, ep, mode & EP_RELU_FIRST, threads)
    p = out3.shape[2]
    mf, scale, shift = (_per_column(ep[:, k], p, out.dtype) for k in (1, 2, 3))
    _bn_col_apply(out3.reshape(n, -1), out3.reshape(n, -1), mf, scale, shift, relu, threads)


# ---------------------------------------------------------------- the FMA peak
# What the cores can do, for the benchmark's "% of peak": independent chains
# of multiply-adds, enough of them to fill every FMA unit's pipeline with the
# widest vectors this build uses, and nothing else (no memory traffic).
cdef enum:
    FMA_CHAINS = 128


def _sgd_loop(floating[::1] p, const floating[::1] grad, floating[::1] buf, double lr, double momentum,
              double weight_decay, bint nesterov, bint first, int nthreads):
    """The loop of sgd_update; buf is read only when not first, written only with momentum."""
    cdef floating lr_ = lr, m = momentum, wd = weight_decay
    cdef Py_ssize_t i
    cdef floating g, b
    with nogil:
        for i in prange(p.shape[0], num_threads=nthreads, schedule="static"):
            g = grad[i]
            if wd != 0:     # skipped at 0, as the reference: 0 * inf would be NaN
                g = g + wd * p[i]
            if m != 0:
                b = g if first else m * buf[i] + g
                buf[i] = b
                g = g + m * b if nesterov else b
            p[i] = p[i] - lr_ * g


def sgd_update(p, grad, buf, double lr, double momentum, double weight_decay, bint nesterov):
    """One SGD step of a parameter in one pass over memory (NumPy's form takes
    about 14: 23.5M float32 parameters, imagenet-resnet-50's, 35 -> 8 ms); see
    the reference for the update. Arrays that are not C-contiguous arrays of
    one float dtype take the reference. Multiply-adds may be fused (one
    rounding instead of two), as in PyTorch's own kernels."""
    dtypes = {a.dtype for a in (p, grad, buf) if a is not None}
    if (len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64)
            or not all(a.flags.c_contiguous for a in (p, grad, buf) if a is not None)
            or (buf is not None and buf.shape != p.shape) or grad.shape != p.shape):
        from minires import _kernels_ref
        return _kernels_ref.sgd_update(p, grad, buf, lr, momentum, weight_decay, nesterov)
    first = buf is None
    if momentum and first:
        buf = np.empty_like(p)
    flat = p.reshape(-1)
    _sgd_loop(flat, grad.reshape(-1), buf.reshape(-1) if momentum else flat, lr, momentum, weight_decay,
              nesterov, first, _threads(flat.shape[0]))
    return buf if momentum else None


cdef float _fma_chains(Py_ssize_t steps, float m, float c) noexcept nogil:
    cdef float a[FMA_CHAINS]
    cdef Py_ssize_t s, j
    cdef float total = 0
    for j in range(FMA_CHAINS):
        a[j] = j
    for s in range(steps):
        for j in range(FMA_CHAINS):
            a[j] = a[j] * m + c
    for j in range(FMA_CHAINS):
        total += a[j]
    return total


def fma_flops(Py_ssize_t steps, int threads):
    """Run steps * 128 float32 multiply-adds on each of `threads` threads at
    once; returns the floating-point operations done (2 per multiply-add).
    Time the call to get the machine's FMA throughput."""
    cdef int t
    cdef float[::1] sink = np.zeros(threads, dtype=np.float32)   # keeps the result alive
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static", chunksize=1):
            sink[t] = _fma_chains(steps, 0.9999999, 1e-7)
    return 2.0 * steps * FMA_CHAINS * threads
