"""`shapes`: a procedurally generated 10-class dataset of 32x32 RGB images.

Each image holds one shape (its class) at a random position, size, tilt (up to 30 degrees)
and colour, over a random colour gradient with small distracting blobs and
pixel noise. Everything is drawn from one seed, so the dataset is
identical on every machine, and 12,000 images take about a second.

Colour and position carry no information about the class, so a linear
classifier on the pixels does poorly; a small CNN has to learn outlines.
"""
import numpy as np

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon",
           "crescent", "bar", "semicircle"]
SIZE = 32


def _polygon(u, v, sides, apothem):
    """Inside a regular polygon with the given apothem (u, v: (n, H, W))."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        theta = 2 * np.pi * k / sides
        inside &= u * np.cos(theta) + v * np.sin(theta) <= apothem
    return inside


def _mask(cls, u, v):
    """Mask of class `cls` in local coordinates (unit radius, shape centred at 0)."""
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    if cls == "circle":
        return rho <= 1
    if cls == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if cls == "triangle":
        return _polygon(u, v, 3, 0.5)
    if cls == "star":
        return rho <= 0.4 + 0.6 * ((1 + np.cos(5 * phi)) / 2) ** 2
    if cls == "cross":
        return ((np.abs(u) <= 0.28) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 1))
    if cls == "ring":
        return (rho <= 1) & (rho >= 0.6)
    if cls == "hexagon":
        return _polygon(u, v, 6, 0.87)
    if cls == "crescent":
        return (rho <= 1) & (np.hypot(u - 0.5, v) > 0.8)
    if cls == "bar":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.3)
    if cls == "semicircle":
        return (rho <= 1) & (v >= 0)
    raise ValueError(cls)


def _backgrounds(rng, n, yy, xx):
    """A random two-colour linear gradient per image: (n, 3, H, W) in [0, 1]."""
    c0, c1 = rng.uniform(0, 1, (n, 3, 1, 1)), rng.uniform(0, 1, (n, 3, 1, 1))
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
    t = (np.cos(angle) * (xx - 15.5) + np.sin(angle) * (yy - 15.5)) / 88 + 0.5   # (n, 1, H, W)
    return c0 + (c1 - c0) * t


def _contrasting(rng, background_mean):
    """A colour at least 0.6 away from the background's mean colour."""
    colour = rng.uniform(0, 1, background_mean.shape)
    for _ in range(20):
        far = np.linalg.norm(colour - background_mean, axis=1) >= 0.6
        if far.all():
            break
        colour[~far] = rng.uniform(0, 1, colour[~far].shape)
    return colour


def generate(n, rng, noise=0.03, blobs=1):
    """n images and labels: (n, 3, 32, 32) uint8, (n,) int64. Balanced classes."""
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    images = _backgrounds(rng, n, yy, xx)                       # (n, 3, H, W)
    # distracting blobs: small discs of random colours
    for _ in range(blobs):
        cy, cx = rng.uniform(0, SIZE, (2, n, 1, 1))
        r = rng.uniform(1.0, 2.0, (n, 1, 1))
        disc = np.hypot(yy - cy, xx - cx) <= r                   # (n, H, W)
        colour = rng.uniform(0, 1, (n, 3))
        images = np.where(disc[:, None], colour[:, :, None, None], images)
    # the shape itself
    radius = rng.uniform(10, 15, (n, 1, 1))
    cy, cx = (rng.uniform(0.7, 1.0, (2, n, 1, 1)) * (SIZE / 2 - radius) * rng.choice([-1, 1], (2, n, 1, 1))
              + SIZE / 2 - 0.5)
    rot = rng.uniform(-np.pi / 6, np.pi / 6, (n, 1, 1))   # up to 30 degrees either way
    du, dv = (xx - cx) / radius, (yy - cy) / radius
    u = np.cos(rot) * du + np.sin(rot) * dv                      # (n, H, W) local coords
    v = -np.sin(rot) * du + np.cos(rot) * dv
    colour = _contrasting(rng, images.mean(axis=(2, 3)))
    for k, cls in enumerate(CLASSES):
        idx = np.flatnonzero(labels == k)
        mask = _mask(cls, u[idx], v[idx])                        # (m, H, W)
        images[idx] = np.where(mask[:, None], colour[idx, :, None, None], images[idx])
    images += rng.normal(0, noise, images.shape)
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels


def make_shapes(seed=0, train_size=10_000, test_size=2_000):
    """Train and test splits from independent streams of one seed."""
    x_train, y_train = generate(train_size, np.random.default_rng([seed, 0]))
    x_test, y_test = generate(test_size, np.random.default_rng([seed, 1]))
    return x_train, y_train, x_test, y_test
