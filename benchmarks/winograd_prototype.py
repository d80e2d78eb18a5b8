"""Winograd F(2x2, 3x3) for stride-1, padding-1 3x3 convolutions: a NumPy
prototype that answers two questions before anyone writes a kernel.

1. Error: float32 Winograd against float64 direct convolution, beside the
   float32 direct kernel's own error (the parity tests allow 1e-4 relative).
2. Speed: this prototype's forward against minires's direct kernel on the
   layer shapes of resnet-20 and wrn-16-4, batch 128.

Each 4x4 input tile d (stride 2) gives a 2x2 output tile
    Y = A^T [ (G g G^T) * (B^T d B) ] A
so the 36 multiplications of four outputs become 16 (2.25x fewer); the
elementwise product over all tiles and channels is 16 matrix products
(F x C) @ (C x tiles), done by BLAS.

    python benchmarks/winograd_prototype.py
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from minires import functional as F
from minires import runtime
from minires.dev.bench import median_ms

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def winograd_conv3x3(x, w):
    """x: (N, C, H, W) with H, W even, w: (F, C, 3, 3) -> (N, F, H, W), stride 1, padding 1."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    dt = x.dtype
    bt, g, at = BT.astype(dt), G.astype(dt), AT.astype(dt)
    u = (g @ w @ g.T).transpose(2, 3, 0, 1).reshape(16, f, c)           # (16, F, C)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    tiles = sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]  # (N, C, H/2, W/2, 4, 4)
    th, tw = tiles.shape[2:4]
    v = bt @ tiles @ bt.T                                                # (N, C, TH, TW, 4, 4)
    v = v.transpose(4, 5, 1, 0, 2, 3).reshape(16, c, n * th * tw)       # (16, C, tiles)
    m = np.matmul(u, v)                                                  # (16, F, tiles)
    m = m.reshape(4, 4, f, n, th, tw).transpose(3, 2, 4, 5, 0, 1)        # (N, F, TH, TW, 4, 4)
    y = at @ m @ at.T                                                    # (N, F, TH, TW, 2, 2)
    return np.ascontiguousarray(y.transpose(0, 1, 2, 4, 3, 5).reshape(n, f, h, wd))


def main():
    runtime.setup()
    rng = np.random.default_rng(0)
    print("| layer (C->F, HxW) | direct float32 max rel err | Winograd float32 max rel err | "
          "direct ms | Winograd (NumPy) ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for c, f, hw, note in [(16, 16, 32, "resnet-20 stage 1"), (32, 32, 16, "resnet-20 stage 2"),
                           (64, 64, 8, "resnet-20 stage 3"), (64, 64, 32, "wrn-16-4 stage 1"),
                           (128, 128, 16, "wrn-16-4 stage 2"), (256, 256, 8, "wrn-16-4 stage 3")]:
        x = rng.standard_normal((128, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        exact = F.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, 1, 1)[0]
        scale = np.abs(exact).max()
        direct = F.conv2d_forward(x, w, None, 1, 1)[0]
        wino = winograd_conv3x3(x, w)
        e_direct = np.abs(direct - exact).max() / scale
        e_wino = np.abs(wino - exact).max() / scale
        t_direct = median_ms(lambda: F.conv2d_forward(x, w, None, 1, 1), 5)
        t_wino = median_ms(lambda: winograd_conv3x3(x, w), 5)
        print(f"| {c}->{f}, {hw}x{hw} ({note}) | {e_direct:.1e} | {e_wino:.1e} | {t_direct:.1f} | "
              f"{t_wino:.1f} | {t_wino / t_direct:.2f} |")


if __name__ == "__main__":
    main()
