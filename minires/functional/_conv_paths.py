"""The fast paths of the 2-D convolution: which algorithm runs, and how.

minires.functional.conv holds the maths and its plain NumPy form; this
file picks one of five algorithms for each call and splits the batch
across threads. Every path computes the same numbers (tests hold each to
the reference), so a reader can skip this file.

1x1 convolutions (ResNet projections, most of a bottleneck) are plain
products per image; see the end of this file. Maps of up to 16 output
positions take one product per kernel tap over the whole batch
(_conv_taps.py; see SMALL_MAP), unless the batch is too small to pay for
it (TAP_ROWS).

im2col + matrix multiply, the general path: each receptive field of an
image is unfolded into a column (im2col), so the convolution becomes a
matrix product per image (or per small tile of images when the feature
maps are small):
    out[n] = w2 @ cols_n,   w2 = w.reshape(F, C*KH*KW),   cols_n: (C*KH*KW, OH*OW)
The backward pass is two more products and col2im, im2col's adjoint.
Why per image and not one product for the whole batch: the batch's columns
(KH*KW copies of the input, 75 MB for a resnet-20 stage-1 layer) would
stream through memory several times, while one image's columns stay in
the CPU cache between im2col and the product.

Direct, the path of every conv with padding < kernel size (every 3x3 and
7x7 conv in the model zoo; 1x1 convs are plain products, see the end of this
file): the compiled kernel sums shifted input planes without building the
columns at all (see _kernels.pyx). Measured on a batch of 128, forward +
backward: 1.65x faster than im2col + BLAS at 64 channels and 32x32, 1.15x at
128 channels and 16x16, 1.07x at 256 channels and 8x8.
The backward pass of a stride-1 conv reuses it: the input gradient is a
stride-1 convolution of dout with the kernel flipped and its in/out
channels swapped,
    dx = conv(dout, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), padding KH-1-PH, KW-1-PW),
and the weight gradient has a kernel of its own. A strided conv (two per
CIFAR ResNet) takes its input gradient through col2im: computed with the
direct kernel as S*S stride-1 convolutions, one per pixel phase, it alone
took 56 ms where im2col's whole backward takes 58 (64->128 channels, 32x32,
batch 128). Its weight gradient comes from the direct kernel (which takes
any stride) where that pays, see STRIDED_DIRECT_CHANNELS.

Winograd, the path of 3x3 convs with stride 1 and padding 1 on maps of
even size with enough channels and images (see WINOGRAD_CHANNELS): the
direct sum takes 9 multiply-adds per output and input channel, Winograd's
F(2x2, 3x3) 4, plus cheap transforms (see _kernels_ref.conv_winograd_forward).
Its input gradient is again such a conv (flipped kernel, as above), so it
takes the same path, and its weight gradient comes from the same transforms
(_kernels_ref.conv_winograd_backward_weight).

Either way images are split across threads (minires.parallel); one image
alone (inference) shares its work between the threads instead (_alone).
"""
import numpy as np

from .. import kernels, parallel
from . import _conv_taps


def forward(x, w, geometry, b=None, relu=False, path=None, bn=None, kept=None):
    """x: (N, C, H, W), w: (F, C, KH, KW), geometry (KH, KW, SH, SW, PH, PW),
    b: (F,) or None -> (out (N, F, OH, OW) with the bias added, then the
    eval-mode batch norm bn = (mean, rstd, gamma, beta, relu_before: after a
    ReLU) and the ReLU applied when asked, what backward needs of x, the path's name).
    path: the one an earlier forward took (conv2d_output), else chosen here.
    kept: None or a dict in which what is derived from a read-only w (its
    Winograd kernels, its direct tiles, the path per input shape) is kept
    between calls (see _keeps)."""
    # Each path adds the bias and applies BN and ReLU to a tile of its output
    # while it is still in cache (the direct kernel, as it writes it).
    kept = kept if _keeps(w, kept) else None
    path = path or _kept_path(x.shape, geometry, w, kept)
    if path == "pointwise":
        out, x3 = _pointwise_forward(x, w, geometry, b, relu, bn)
        return out, x3, path
    if path == "taps":
        w_taps = _tap_matrices(w, x.shape, geometry)
        if w_taps is not None:
            return _taps_forward(x, w, w_taps, geometry, b, relu, bn), x, path
        path = "im2col"
    if path == "winograd":
        return _winograd_forward(x, w, geometry, b, relu, bn, kept), x, path
    if path == "direct":
        return _direct_forward(x, w, geometry, b, relu, bn, kept), x, path
    return _im2col_forward(x, w, geometry, b, relu, bn), x, path


# Small maps (ImageNet ResNets applied to 32x32 images end at 4x4, 2x2 and
# 1x1) take one product per kernel tap over all the images (_conv_taps),
# which also skips the taps that read only padding. Per image, a conv on a
# 1x1 map is a matrix-vector product, and the direct kernel's zero border is
# most of its grid (75% at 1x1). Forward + backward, batch 128, 2 threads,
# AMD EPYC (Zen 4), ms: 3x3 512->512 at 1x1: im2col 39.5, taps 3.6; 3x3
# 256->256 at 2x2: direct 45.7, im2col 35.2, taps 9.8; 3x3 128->128 at 4x4:
# direct 21.2, taps 9.5; 3x3 64->64 at 8x8: direct 12.4, taps 14.8 (so
# SMALL_MAP stops at 16 positions); 1x1 64->128 stride 2 to 4x4: per image
# 1.3, taps 2.6 (so 1x1 convs take taps only below 16 positions).
SMALL_MAP = 16


# The tap path copies each useful tap's (F, C) weights before its product;
# with few rows (images x positions) the copies cost more than im2col's one
# product. Forward, 2 threads, AMD EPYC (Zen 4), ms (taps / im2col): 3x3
# 256->256 at 2x2, 1 image 0.46 / 0.17, 8 images 1.09 / 0.90, 32 images
# 1.68 / 2.08; 3x3 512->512 at 1x1 (one useful tap of nine), 2 images
# 0.62 / 0.54, 4 images 0.67 / 2.57.
TAP_ROWS = 128


def _taps_pay(x_shape, geometry, positions):
    """Enough rows per product (TAP_ROWS), or at least 4 images and at most half
    of the taps useful (a 3x3 conv on a 1x1 map: the tap path reads a ninth of w)."""
    n = x_shape[0]
    if n * positions >= TAP_ROWS:
        return True
    useful = len(_conv_taps.taps(geometry, x_shape[2:], _out_size(x_shape, geometry)))
    return n >= 4 and 2 * useful <= geometry[0] * geometry[1]


def choose_path(x_shape, geometry, w, kept=False):
    """The algorithm for a conv: "taps", "pointwise", "winograd", "direct" or "im2col".
    kept: w's Winograd kernels are kept between calls (see _kept_winograd)."""
    kh, kw, sh, sw, ph, pw = geometry
    oh, ow = _out_size(x_shape, geometry)
    positions = oh * ow
    pointwise = kh == kw == 1 and ph == pw == 0
    if positions < SMALL_MAP or (positions == SMALL_MAP and not pointwise):
        # (forward takes im2col after all where w is not finite: see _tap_matrices)
        return "taps" if _taps_pay(x_shape, geometry, positions) else "im2col"
    if pointwise:
        return "pointwise"
    if _alone_takes_im2col(x_shape[0], positions, w.size):
        return "im2col"
    if _winograd_applies(x_shape, geometry, w.shape):
        return "winograd"
    if kept and _winograd_alone_applies(x_shape, geometry, w.shape):
        return "winograd"
    return "direct" if _direct_applies(geometry) else "im2col"


# One image on an 8x8 output: the direct kernel's tiles of 32 positions
# fit the 10-wide padded rows poorly, while im2col's columns (64 of them)
# suit kernels.matmul, which shares the rows between the threads. It pays
# when the weights are big (forward, one image, 2 threads, AMD Zen 4, ms,
# direct / im2col + kernels.matmul: 256->256 at 8x8 0.66-0.71 / 0.53-0.58,
# 128->256 stride 2 to 8x8 0.38-0.42 / 0.28-0.32, 64->64 at 8x8 0.052 / 0.08).
# Only with the AVX-512 tiles: AVX2's tiles of 24 positions fit those rows
# better, and there the direct kernel stayed faster even with kernels.matmul
# sharing the rows (AMD Zen 3, wrn-16-4 folded, one image, medians of 100
# interleaved runs: direct 7.95 ms, im2col 8.67).
ALONE_MAP = 64
ALONE_WEIGHTS = 1 << 18


def _alone_takes_im2col(n, positions, weights):
    """One image on a small map with big weights, on the AVX-512 tiles."""
    return (_alone(n) and positions <= ALONE_MAP and weights >= ALONE_WEIGHTS and kernels.matmul_shares_rows()
            and kernels.wide_forward_tiles())


def _finite(a):
    """No inf or NaN in a (one pass; a sum of huge finite values that
    overflows reads as not finite, which only costs the slower path)."""
    with np.errstate(invalid="ignore", over="ignore"):      # inf - inf: the answer, not a warning
        return bool(np.isfinite(a.sum()))


def _tap_matrices(w, x_shape, geometry):
    """{(i, j): w[:, :, i, j] as a contiguous (F, C) matrix} for the taps that
    read at least one pixel, or None when a weight is inf or NaN: such a
    weight makes NaN even where it meets the padding, and only im2col
    multiplies the zeros (kernels.tap_weights copies and checks in one pass;
    on a 1x1 map a 3x3 conv copies one tap of nine)."""
    kw = w.shape[3]
    useful = _conv_taps.taps(geometry, x_shape[2:], _out_size(x_shape, geometry))
    wt, finite = kernels.tap_weights(w, [i * kw + j for i, j, *_ in useful])     # (taps, F, C)
    if not finite:
        return None
    return {(i, j): wt[k] for k, (i, j, *_) in enumerate(useful)}


def _taps_forward(x, w, w_taps, geometry, b, relu, bn=None):
    """Per chunk of images, one product per useful tap (_conv_taps.forward)."""
    n, f = x.shape[0], w.shape[0]
    out_size = _out_size(x.shape, geometry)
    useful = _conv_taps.taps(geometry, x.shape[2:], out_size)
    out = np.empty((n, f, *out_size), dtype=x.dtype)

    def images(lo, hi):
        out[lo:hi] = _conv_taps.forward(x[lo:hi], w_taps, useful, (f, *out_size)).transpose(2, 3, 0, 1)
        kernels.bias_relu(out[lo:hi], b, relu, threads=1, bn=bn)

    parallel.map_chunks(images, n)
    return out


def _taps_backward(dout, x, w, geometry, input_grad=True):
    """dx (N, C, H, W) (None when not input_grad), dw (F, C, KH, KW) with one
    product per useful tap (_conv_taps.backward), or None where w is not
    finite (see _tap_matrices)."""
    w_taps = _tap_matrices(w, x.shape, geometry) if input_grad else {}
    if w_taps is None:
        return None
    useful = _conv_taps.taps(geometry, x.shape[2:], dout.shape[2:])
    dx = np.empty(x.shape, dtype=x.dtype) if input_grad else None

    def images(lo, hi):
        dxt, dw_taps = _conv_taps.backward(dout[lo:hi], x[lo:hi], w_taps, useful, input_grad)
        if input_grad:
            dx[lo:hi] = dxt.transpose(2, 3, 0, 1)
        return dw_taps

    parts = parallel.map_chunks(images, x.shape[0])
    dw_taps = parts[0]                                  # the chunks' sums, added in place
    for part in parts[1:]:                              # (each is as big as the useful taps of w)
        dw_taps += part
    if len(dw_taps) == w.shape[2] * w.shape[3]:         # every tap useful (a 1x1 conv's one)
        return dx, dw_taps.transpose(1, 2, 0).reshape(w.shape)
    dw = np.zeros(w.shape, dtype=w.dtype)               # taps that read only padding get no gradient
    for k, (i, j, *_) in enumerate(useful):
        dw[:, :, i, j] = dw_taps[k]
    return dx, dw


def backward(dout, cache, input_grad=True):
    """dout: (N, F, OH, OW), a ConvCache -> dx: (N, C, H, W), dw: (F, C, KH, KW);
    dx is None when not input_grad."""
    if cache.path == "pointwise":
        return _pointwise_backward(dout, cache, input_grad)
    x, w, geometry = cache[:3]
    if cache.path == "taps" and _finite(dout):     # else dout * padding would make NaN where im2col does
        grads = _taps_backward(dout, x, w, geometry, input_grad)
        if grads is not None:                       # (None: w is no longer finite since forward)
            return grads
    # The direct input gradient multiplies w with the zero border of dout's
    # grid, which a non-finite w turns into 0 * inf = NaN; im2col never does.
    if cache.path in ("direct", "winograd") and geometry[2:4] == (1, 1) and np.isfinite(w).all():
        return _direct_backward(dout, x, w, geometry, winograd=cache.path == "winograd", input_grad=input_grad)
    if cache.path == "direct" and _strided_weight_gradient_pays(w.shape, geometry):
        return _strided_backward(dout, x, w, geometry, input_grad)
    return im2col_backward(dout, x, w, geometry, input_grad)


# Winograd pays where the 16 products are long enough to outweigh the
# transforms (`python benchmarks/winograd_layers.py`, output in
# benchmarks/winograd-layers-2026-11-27.md). Batch 128, 2 threads, AMD EPYC
# (Zen 4), time against the direct kernel, forward / weight gradient:
# 16->16 channels at 32x32 1.03 / 1.15 (0.94 / 0.96 in an earlier run),
# 32->32 at 16x16 0.58 / 0.75, 32->32 at 32x32 0.78 / 0.82, 64->64 at 8x8
# 0.54 / 0.61, 64->64 at 32x32 0.60 / 0.65, 128->128 at 16x16 0.49 / 0.58,
# 256->256 at 8x8 0.43 / 0.63.
WINOGRAD_CHANNELS = 32

# Transforming the kernels costs the same for one image as for 128: forward,
# Winograd / direct, 64->64 at 8x8: 1 image 1.88, 4 images 1.02, 16 images
# 0.70; 32->32 at 16x16: 1 image 1.22, 4 images 1.09, 8 images 0.93, 32
# images 0.78; 32->32 at 32x32: 1 to 8 images 1.00-1.08, 16 images 0.94
# (AMD Zen 4, one run, one thread below 2 images). One image with its
# transforms and products shared between two threads was tried (AMD Zen 3):
# alone, 128->128 at 16x16 took 0.75 of the direct kernel's time and
# 256->256 at 8x8 0.89, but inside wrn-16-4 on one image the model ran 1.08
# times as long: with cold caches, writing and reading the transformed
# kernels (4 MB at 256 channels) costs more than the multiplications saved.
WINOGRAD_POSITIONS = 2048           # images x height x width, at least


def _winograd_applies(x_shape, geometry, w_shape):
    """3x3, stride 1, padding 1, even height and width, at least
    WINOGRAD_POSITIONS input positions over the batch, and at least
    WINOGRAD_CHANNELS channels in and out."""
    (n, _, h, wd), (f, c) = x_shape, w_shape[:2]
    return (tuple(geometry) == (3, 3, 1, 1, 1, 1) and h % 2 == 0 and wd % 2 == 0
            and n * h * wd >= WINOGRAD_POSITIONS and min(c, f) >= WINOGRAD_CHANNELS)


def _winograd_forward(x, w, geometry, b, relu, bn=None, kept=None):
    """Per chunk of images, Winograd's F(2x2, 3x3) (one image: on every
    thread); a chunk where it meets an inf or NaN is redone by the direct
    kernel, whose sums spread a non-finite value only over the outputs whose
    windows hold it, as PyTorch's do."""
    n, f = x.shape[0], w.shape[0]
    out = np.empty((n, f, *x.shape[2:]), dtype=x.dtype)
    u = _kept_winograd(w, kept) if kept is not None else kernels.winograd_weights(w)
    threads = parallel.get_threads() if _alone(n) else 1

    def images(lo, hi):
        if not kernels.conv_winograd_forward(x[lo:hi], u, out[lo:hi], b, relu, bn=bn, threads=threads):
            kernels.conv_direct_forward(x[lo:hi], w, out[lo:hi], *geometry[2:], b, relu, threads=threads, bn=bn)

    parallel.map_chunks(images, n, blas=False)
    return out


# A model folded for inference (nn.fuse_for_inference) keeps its weights
# fixed and read-only, so their Winograd kernels are transformed once and
# kept in the layer's dict (functional.conv2d_forward's `kept`). The kernels
# are used only while they belong to this very array and it cannot change:
# read-only and owning its data (a read-only view may see its base change).
def _keeps(w, kept):
    """kept is a dict, and w a read-only array that owns its data."""
    return kept is not None and not w.flags.writeable and w.base is None


def _kept_winograd(w, kept):
    """kernels.winograd_weights(w), transformed on the first call for this w and kept in `kept`."""
    return _kept(w, kept, "winograd", kernels.winograd_weights)


def _kept_path(x_shape, geometry, w, kept):
    """choose_path's answer, for a kept w remembered per shape of x and w,
    geometry and thread count: all it depends on."""
    if kept is None:
        return choose_path(x_shape, geometry, w)
    key = ("path", x_shape, w.shape, tuple(geometry), parallel.get_threads())
    path = kept.get(key)
    if path is None:
        path = kept[key] = choose_path(x_shape, geometry, w, kept=True)
    return path


# The direct kernel's register tiles read the weights in their own order
# (kernels.direct_weights): a folded model's are tiled once and kept, and
# its paths chosen once per input shape (_kept_path). Folded, one image, 2
# threads, AMD Zen 3, medians of 200 alternating calls in one process, kept
# against tiled and chosen on every call: resnet-20 0.92, resnet-56 0.93,
# plain-56 0.92 of the time.
def _kept_direct(w, kept):
    """kernels.direct_weights(w), tiled on the first call for this w and kept in `kept`."""
    return _kept(w, kept, "direct", lambda w: kernels.direct_weights(w, parallel.get_threads()))


def _kept(w, kept, name, derive):
    """derive(w), computed on the first call for this very w and kept in kept[name]."""
    entry = kept.get(name)
    if entry is None or entry[0] is not w:
        entry = kept[name] = (w, derive(w))
    return entry[1]


# One image takes Winograd only with kept kernels, on wide layers and small
# maps, its work shared between the threads (kernels.conv_winograd_forward's
# `threads`). Forward inside wrn-16-4, folded, one image, 2 threads, AMD
# Zen 3, medians of 100 calls each way, ms, direct / Winograd: 128->128 at
# 16x16 0.88 / 0.67, 256->256 at 8x8 0.86 / 0.61; the model 0.853 and 0.858
# of the time (medians of 8 and 10 alternating runs). Narrower layers and
# bigger maps lost (in wrn-16-4, 64->64 at 32x32 0.73 / 1.15; in resnet-20,
# 32->32 at 16x16 0.11 / 0.15 and 64->64 at 8x8 0.11 / 0.13), as does
# transforming the kernels on every call (see WINOGRAD_POSITIONS). Measured
# on AVX2 only: with the AVX-512 tiles the im2col rule above (ALONE_MAP)
# still comes first, and an 8x8 map's 16 tiles fill half a register tile.
WINOGRAD_ALONE_CHANNELS = 128
WINOGRAD_ALONE_MAP = 16 * 16


def _winograd_alone_applies(x_shape, geometry, w_shape):
    """One image (fewer than the threads), 3x3, stride 1, padding 1, even
    sides, at most WINOGRAD_ALONE_MAP positions, at least
    WINOGRAD_ALONE_CHANNELS channels in and out."""
    (n, _, h, wd), (f, c) = x_shape, w_shape[:2]
    return (_alone(n) and tuple(geometry) == (3, 3, 1, 1, 1, 1) and h % 2 == 0 and wd % 2 == 0
            and h * wd <= WINOGRAD_ALONE_MAP and min(c, f) >= WINOGRAD_ALONE_CHANNELS)


def _direct_forward(x, w, geometry, b, relu, bn=None, kept=None):
    n, f = x.shape[0], w.shape[0]
    oh, ow = _out_size(x.shape, geometry)
    out = np.empty((n, f, oh, ow), dtype=x.dtype)
    wt = _kept_direct(w, kept) if kept is not None else None
    if _split_grid(n, w.size * oh * ow):
        kernels.conv_direct_forward(x, w, out, *geometry[2:], b, relu, threads=parallel.get_threads(), bn=bn,
                                    wt=wt)
    else:
        parallel.map_chunks(lambda lo, hi: kernels.conv_direct_forward(x[lo:hi], w, out[lo:hi], *geometry[2:],
                                                                       b, relu, bn=bn, wt=wt), n, blas=False)
    return out


# With fewer images than threads (one image at inference) the batch leaves
# threads idle; the kernel then shares each image's grid of tiles between
# the threads instead. Convs under SPLIT_MACS multiply-adds per image stay on
# one thread: a sleeping thread takes longer to wake than they take (see
# docs/runtime.md). One image, AMD EPYC (Zen 4), ms, one thread / shared by
# two: 3x3 3->16 at 32x32 (0.4 MMAC) 0.019 / 0.017, 16->32 stride 2 (1.2)
# 0.048 / 0.044, 16->16 at 32x32 (2.4) 0.056 / 0.041, 64->64 at 32x32 (38)
# 0.72 / 0.40, 256->256 at 8x8 (38) 1.24 / 0.62. Whole models, folded, one
# image: resnet-20 2.31 -> 1.63, wrn-16-4 12.8 -> 7.6, bottleneck-29 6.4 -> 5.5.
SPLIT_MACS = 1_000_000


def _split_grid(n, macs_per_image):
    """Share one call's grids between the threads: fewer images than threads, big enough convs."""
    return _alone(n) and macs_per_image >= SPLIT_MACS


# One image's products on small maps have few columns (16 at 4x4, one at
# 1x1) and read each weight once or a few times: a single-threaded BLAS
# call is bound by one core's memory bandwidth, so kernels.matmul shares
# their rows between the threads (and beats BLAS's kernel on such shapes
# even on one thread). One image, folded, 2 threads, AMD EPYC (Zen 4),
# medians of 3 alternating runs, ms: imagenet-resnet-18 5.17 -> 3.28,
# imagenet-resnet-50 12.70 -> 7.87, bottleneck-29 3.59 -> 3.27.
def _alone(n):
    """Fewer images than threads: each image's work is shared between them."""
    return n < parallel.get_threads()


def _im2col_forward(x, w, geometry, b, relu, bn=None):
    """Per image (or per tile of small images), out = w2 @ im2col(x[tile]) (+ b, BN, ReLU)."""
    n, f = x.shape[0], w.shape[0]
    oh, ow = _out_size(x.shape, geometry)
    w2 = w.reshape(f, -1)                              # (F, C*KH*KW)
    out = np.empty((n, f, oh * ow), dtype=x.dtype)
    alone = _alone(n)
    tile = 1 if alone else _images_per_tile(oh * ow)

    def images(lo, hi):
        for i in range(lo, hi, tile):
            j = min(i + tile, hi)
            cols = kernels.im2col(x[i:j], *geometry, threads=0 if alone else 1)   # (C*KH*KW, T*OH*OW)
            if alone:
                kernels.matmul(w2, cols, out[i])                      # (F, OH*OW), on every thread
            elif j - i == 1:
                np.matmul(w2, cols, out=out[i])
            else:
                out[i:j] = (w2 @ cols).reshape(f, j - i, -1).transpose(1, 0, 2)
            kernels.bias_relu(out[i:j], b, relu, threads=1, bn=bn)

    if alone:
        with parallel.single_threaded_blas():         # float64 products, which kernels.matmul leaves to BLAS
            images(0, n)
    else:
        parallel.map_chunks(images, n)
    return out.reshape(n, f, oh, ow)


def _out_size(x_shape, geometry):
    (h, w), (kh, kw, sh, sw, ph, pw) = x_shape[2:], geometry
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def im2col_backward(dout, x, w, geometry, input_grad=True):
    """dout: (N, F, OH, OW) -> dx: (N, C, H, W) (None when not input_grad),
    dw: (F, C, KH, KW) through im2col/col2im.

    Per tile of images, with dout2 = dout[tile] as (F, T*OH*OW):
    dw += dout2 @ cols.T and dx[tile] = col2im(w2.T @ dout2). The columns are
    recomputed rather than kept from forward: cheaper than storing KH*KW
    copies of every input."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    w2 = w.reshape(f, -1)                              # (F, C*KH*KW)
    dx = np.empty(x.shape, dtype=x.dtype) if input_grad else None
    tile = _images_per_tile(dout.shape[2] * dout.shape[3])

    def images(lo, hi):
        dw_t = np.zeros((w2.shape[1], f), dtype=w.dtype)            # dw transposed, (C*KH*KW, F)
        for i in range(lo, hi, tile):
            j = min(i + tile, hi)
            cols = kernels.im2col(x[i:j], *geometry, threads=1)       # (C*KH*KW, T*OH*OW)
            d2 = _dout_columns(dout, i, j)                             # (F, T*OH*OW)
            dw_t += cols @ d2.T        # = (d2 @ cols.T).T; this orientation runs 1.5x faster in OpenBLAS
            if input_grad:
                dx[i:j] = kernels.col2im(w2.T @ d2, c, h, wd, *geometry, threads=1)
        return dw_t

    dw = sum(parallel.map_chunks(images, n)).T.reshape(w.shape)
    return dx, dw


def _dout_columns(dout, i, j):
    """dout[i:j] (T, F, OH, OW) as the (F, T*OH*OW) matrix of the im2col products (a copy)."""
    return dout[i:j].reshape(j - i, dout.shape[1], -1).transpose(1, 0, 2).reshape(dout.shape[1], -1)


# A strided 3x3 conv with at most 64 output channels (resnet-20's 16->32 and
# 32->64) takes its weight gradient from the direct kernel, which takes any
# stride, and only its input gradient through col2im, which then needs no
# im2col. Backward, batch 128, 2 threads, AMD Zen 3, medians of 15
# alternating calls, ms, im2col / this: 16->32 at 32x32 13.6 / 10.4, 32->64
# at 16x16 7.3 / 6.0, 64->64 at 32x32 47.5 / 42.7; wider layers gain nothing
# (64->128 at 32x32 75.1 / 74.5). resnet-20's step: 0.970 and 0.986 of the
# time (two runs of 40 alternating steps). An earlier try of the same split
# (before the weight tile added its sums as vectors, and timed always in the
# same order) had found the step 0.995.
STRIDED_DIRECT_CHANNELS = 64


def _strided_weight_gradient_pays(w_shape, geometry):
    """A strided 3x3 conv of at most STRIDED_DIRECT_CHANNELS output channels."""
    return w_shape[2:] == (3, 3) and geometry[2:4] != (1, 1) and w_shape[0] <= STRIDED_DIRECT_CHANNELS


def _strided_backward(dout, x, w, geometry, input_grad=True):
    """dout: (N, F, OH, OW) -> dx (None when not input_grad), dw of a strided
    conv: dw by the direct kernel, dx = col2im(w2.T @ dout2) per tile of images."""
    n, c, h, wd = x.shape
    w2 = w.reshape(w.shape[0], -1)                     # (F, C*KH*KW)
    dx = np.empty(x.shape, dtype=x.dtype) if input_grad else None
    tile = _images_per_tile(dout.shape[2] * dout.shape[3])

    def images(lo, hi):
        for i in range(lo, hi, tile) if input_grad else ():
            j = min(i + tile, hi)
            dx[i:j] = kernels.col2im(w2.T @ _dout_columns(dout, i, j), c, h, wd, *geometry, threads=1)
        return kernels.conv_direct_backward_weight(x[lo:hi], dout[lo:hi], *geometry)

    dw = sum(parallel.map_chunks(images, n))
    if not np.isfinite(dw).all():
        dw = im2col_backward(dout, x, w, geometry, input_grad=False)[1]   # as _direct_backward
    return dx, dw


def _direct_applies(geometry):
    """Use the direct kernels: padding < kernel size (so that the input
    gradient is again a convolution with non-negative padding)."""
    kh, kw, sh, sw, ph, pw = geometry
    return ph < kh and pw < kw


def _direct_backward(dout, x, w, geometry, winograd=False, input_grad=True):
    """dout: (N, F, OH, OW) -> dx: (N, C, H, W) (None when not input_grad),
    dw: (F, C, KH, KW) of a stride-1 conv with the direct kernels, or by
    Winograd's F(2x2, 3x3) when asked."""
    w_flipped = _flipped(w) if input_grad else None
    u = kernels.winograd_weights(w_flipped) if winograd and input_grad else None
    dx = np.empty(x.shape, dtype=x.dtype) if input_grad else None

    def images(lo, hi):
        if input_grad and not (winograd and kernels.conv_winograd_forward(dout[lo:hi], u, dx[lo:hi])):
            _input_gradient_stride1(dout[lo:hi], w_flipped, dx[lo:hi], geometry)
        if winograd:
            return kernels.conv_winograd_backward_weight(x[lo:hi], dout[lo:hi])
        return kernels.conv_direct_backward_weight(x[lo:hi], dout[lo:hi], *geometry)

    dw = sum(parallel.map_chunks(images, x.shape[0], blas=False))
    if not np.isfinite(dw).all():
        # The kernel also multiplies the zero gradient of the grid's junk
        # columns with real pixels, and 0 * NaN or 0 * inf is NaN: it would put
        # NaN at taps that never meet a NaN pixel (Winograd's transforms
        # spread it further still). Only when the result is not finite, redo
        # the sum over real positions alone.
        dw = im2col_backward(dout, x, w, geometry)[1]
    return dx, dw


def _input_gradient_stride1(dout, w_flipped, dx, geometry):
    """The backward pass of a stride-1 convolution towards its input, written
    into dx (N, C, H, W). Each input pixel gathers dout over the outputs whose
    window covered it, weighted by the tap that joined them; that gather is
    itself a stride-1 convolution of dout, with the kernel flipped in space,
    its in/out channels swapped (w_flipped = _flipped(w)) and padding KH-1-PH,
    KW-1-PW, so the forward kernel computes it."""
    kh, kw, _, _, ph, pw = geometry
    kernels.conv_direct_forward(dout, w_flipped, dx, 1, 1, kh - 1 - ph, kw - 1 - pw)


def _flipped(w):
    """w: (F, C, KH, KW) -> the kernel of the transposed convolution, (C, F, KH, KW), flipped."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _images_per_tile(positions, columns=1024):
    """Images per im2col tile: one when an image has enough output positions to
    give BLAS a long matrix, more for small feature maps (8x8, or ImageNet
    ResNet's 1x1) where one image alone would make a sliver of a product."""
    return max(1, columns // positions)


# A 1x1 convolution needs no im2col: each image is already a (C, H*W) matrix,
# so out[n] = w2 @ x[n] reads the input in place (ResNet projections and the
# bottleneck blocks are mostly 1x1 convs). Chunks of images run on our threads
# with single-threaded BLAS, like the other paths: a multi-threaded BLAS call
# leaves its threads spinning for a while afterwards, which halved the speed
# of the batchnorm that came next (measured in bottleneck-29). One image
# alone takes kernels.matmul, which shares the product's rows between the
# threads (1x1 convs on one image, 2 threads, AMD Zen 4, ms, the direct
# kernel on both threads / kernels.matmul / BLAS: 64->64 at 32x32 0.107 /
# 0.092 / 0.124, 512->128 at 4x4 0.050 / 0.017 / 0.026).
def _pointwise_forward(x, w, geometry, b, relu, bn=None):
    """-> out (N, F, OH, OW) (+ b, BN, ReLU), and the strided input it read, (N, C, OH*OW)."""
    sh, sw = geometry[2:4]
    n, c = x.shape[:2]
    f = w.shape[0]
    xs = np.ascontiguousarray(x[:, :, ::sh, ::sw]) if (sh, sw) != (1, 1) else x
    oh, ow = xs.shape[2:]
    x3 = xs.reshape(n, c, oh * ow)                     # (N, C, OH*OW)
    w2 = w.reshape(f, c)
    out = np.empty((n, f, oh * ow), dtype=x.dtype)     # (N, F, OH*OW)
    if _alone(n):
        with parallel.single_threaded_blas():             # float64 products, which kernels.matmul leaves to BLAS
            _products(w2, x3, out, threads=0)
    elif oh * ow <= SMALL_MAP:
        parallel.map_chunks(lambda lo, hi: _products(w2, x3[lo:hi], out[lo:hi]), n)
    else:
        parallel.map_chunks(lambda lo, hi: np.matmul(w2, x3[lo:hi], out=out[lo:hi]), n)
    kernels.bias_relu(out, b, relu, bn=bn)
    return out.reshape(n, f, oh, ow), x3


# Products with a few columns (16 on a 4x4 map, the ImageNet ResNets'
# bottlenecks) run faster in kernels.matmul than in BLAS, and the weight
# gradient's per-image products (F, 16) @ (16, C) best as one product over
# the images (tensordot). Batch 128, 2 threads, AMD Zen 4, ms, BLAS per
# image / this: forward 128->512 at 4x4 1.79 / 1.60, 512->128 2.12 / 1.59;
# weight gradient 128->512 3.50 / 2.24, 512->128 4.06 / 2.02 (on 8x8 maps
# and up BLAS per image was as fast or faster).
def _products(a, b3, out3, threads=1):
    """out3[i] = a @ b3[i] for each image (kernels.matmul; threads: its own, 1 = the calling thread alone)."""
    for i in range(b3.shape[0]):
        kernels.matmul(a, b3[i], out3[i], threads=threads)


def _pointwise_backward(dout, cache, input_grad=True):
    x3, w, (_, _, sh, sw, _, _), _, x_shape = cache[:5]
    n, f = dout.shape[:2]
    d3 = dout.reshape(n, f, -1)                        # (N, F, OH*OW)
    w2 = w.reshape(f, -1)                              # (F, C)
    dx3 = np.empty(x3.shape, dtype=dout.dtype) if input_grad else None     # (N, C, OH*OW)
    small = d3.shape[2] <= SMALL_MAP
    w2t = np.ascontiguousarray(w2.T) if input_grad else None      # (C, F)

    def images(lo, hi):
        if input_grad:
            if small:
                _products(w2t, d3[lo:hi], dx3[lo:hi])
            else:
                np.matmul(w2t, d3[lo:hi], out=dx3[lo:hi])
        if small:
            return np.tensordot(d3[lo:hi], x3[lo:hi], axes=([0, 2], [0, 2]))   # (F, C)
        return np.matmul(d3[lo:hi], x3[lo:hi].transpose(0, 2, 1)).sum(axis=0)

    dw = sum(parallel.map_chunks(images, n)).reshape(w.shape)
    if not input_grad:
        return None, dw
    if (sh, sw) == (1, 1):
        dx = dx3.reshape(x_shape)
    else:
        dx = np.zeros(x_shape, dtype=dout.dtype)       # skipped pixels get no gradient
        dx[:, :, ::sh, ::sw] = dx3.reshape(n, -1, *dout.shape[2:])
    return dx, dw
