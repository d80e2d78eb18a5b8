"""Datasets (shapes, CIFAR-10, CIFAR-100), normalisation, augmentation, minibatches.

Images are kept as uint8 (N, 3, 32, 32) and turned into normalised float32
one minibatch at a time: CIFAR's 50,000 training images take 150 MB that way
instead of 600 MB.

CIFAR's official files are Python pickles, and unpickling can run code. So
minires unpickles only files from an archive whose md5 is the official one,
or from a folder the caller trusts (one the user named in this command, or
the default cache): never from a folder that a run's config.json names.
"""
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import shapes
from .atomic import atomic_write
from .errors import MiniresError

CIFAR = {
    "cifar10": dict(archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
                    md5="c58f30108f718f92721af3b95e74349a",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta"),
    "cifar100": dict(archive="cifar-100-python.tar.gz", folder="cifar-100-python",
                     md5="eb9058c3a382ffc7106e4002c42a8d85",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     train=["train"], test=["test"], meta="meta"),
}
DATASETS = ["shapes", "cifar10", "cifar100"]


class DataError(MiniresError, RuntimeError):
    """Data missing, corrupted or unreadable; the message says what to do."""


@dataclass
class Dataset:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,), with per-channel
    mean and std (3,) of the training images in [0, 1]."""
    name: str
    classes: list
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray = None
    y_val: np.ndarray = None
    mean: np.ndarray = field(default=None)
    std: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.mean is None:
            self.mean, self.std = channel_stats(self.x_train)

    @property
    def num_classes(self):
        return len(self.classes)


def channel_stats(images):
    """Mean and std per channel of uint8 images (N, 3, H, W), scaled to [0, 1]."""
    x = images.reshape(images.shape[0], images.shape[1], -1)
    mean = np.zeros(images.shape[1])
    sq = np.zeros(images.shape[1])
    for start in range(0, len(x), 5000):  # in chunks: float64 of all CIFAR would be 1.2 GB
        chunk = x[start:start + 5000].astype(np.float64) / 255
        mean += chunk.sum(axis=(0, 2))
        sq += (chunk ** 2).sum(axis=(0, 2))
    count = x.shape[0] * x.shape[2]
    mean /= count
    return mean.astype(np.float32), np.sqrt(sq / count - mean ** 2).astype(np.float32)


# ---------------------------------------------------------------- CIFAR files
def default_data_dir():
    return os.environ.get("MINIRES_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "minires")


def md5sum(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download(url, dest):
    """Fetch url to dest (complete or not at all), with a progress bar."""
    from tqdm import tqdm
    with urllib.request.urlopen(url, timeout=30) as r, atomic_write(dest, "wb") as f:
        total = int(r.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest)) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))


def _verify_md5(archive, spec):
    """DataError unless archive is byte for byte the official file."""
    digest = md5sum(archive)
    if digest != spec["md5"]:
        raise DataError(f"checksum mismatch for {archive}: md5 {digest}, expected {spec['md5']}. "
                        "The file is corrupted or truncated: delete it and download it again.")


def _extract_verified(archive, data_dir, spec):
    """Check the archive's md5, extract to a temp folder, then rename into place.

    A truncated or corrupted archive raises DataError and leaves nothing behind.
    """
    _verify_md5(archive, spec)
    tmp = tempfile.mkdtemp(dir=data_dir, prefix=".extract-")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(spec["folder"] + "/")
                       and m.isfile() and ".." not in m.name.split("/")]
            tar.extractall(tmp, members=members)
        os.replace(os.path.join(tmp, spec["folder"]), os.path.join(data_dir, spec["folder"]))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"could not extract {archive}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _missing_folders(path):
    """The folders os.makedirs(path) would create, deepest first."""
    made = []
    while not os.path.exists(path):
        made.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return made


def locate_cifar(name, data_dir=None, download=True):
    """Path of the extracted CIFAR folder, extracting or downloading it if needed.

    Looks in data_dir (else $MINIRES_DATA, else ~/.cache/minires) for the
    extracted folder, then for the official archive, then downloads it.
    """
    spec = CIFAR[name]
    data_dir = os.path.abspath(data_dir or default_data_dir())
    folder = os.path.join(data_dir, spec["folder"])
    if os.path.isdir(folder):
        return folder
    archive = os.path.join(data_dir, spec["archive"])
    if not os.path.exists(archive):
        if not download:
            raise DataError(f"{name}: no {spec['folder']}/ or {spec['archive']} in {data_dir}")
        made = _missing_folders(data_dir)
        os.makedirs(data_dir, exist_ok=True)
        try:
            _download(spec["url"], archive)
        except OSError as exc:
            for path in made:           # a failed download leaves no empty cache folder behind
                try:
                    os.rmdir(path)
                except OSError:
                    break
            raise DataError(
                f"{name} is not in {data_dir} and could not be downloaded ({exc}).\n"
                f"Put the official archive there as {archive} (md5 {spec['md5']}, from {spec['url']}),\n"
                f"or its extracted folder as {folder}/, or point --data-dir / $MINIRES_DATA at them."
            ) from None
    _extract_verified(archive, data_dir, spec)
    return folder


def _unpickle(open_file, where):
    # Only ever called on files from an md5-verified archive or a trusted
    # folder (see the module docstring): pickles can run code.
    try:
        with open_file() as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as exc:   # what a damaged pickle can raise
        raise DataError(f"cannot read CIFAR file {where}: {type(exc).__name__}: {exc}") from None


def folder_reader(folder):
    """fname -> (unpickled object, where it came from), from an extracted CIFAR folder."""
    def read(fname):
        path = os.path.join(folder, fname)
        return _unpickle(lambda: open(path, "rb"), path), path
    return read


def archive_reader(tar, archive, spec):
    """fname -> (unpickled object, where it came from), straight from the md5-verified archive."""
    def read(fname):
        where = f"{archive}:{spec['folder']}/{fname}"
        def open_member():
            f = tar.extractfile(f"{spec['folder']}/{fname}")   # KeyError if absent
            if f is None:
                raise OSError("not a regular file")
            return f
        return _unpickle(open_member, where), where
    return read


def _batch_arrays(d, where, label_key):
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) of one CIFAR batch dict.

    The official files hold uint8 rows of 3072 pixels and integer labels;
    anything else is refused, never cast: float pixels cast to uint8 would
    turn [0, 1] images into zeros, float labels would be truncated.
    """
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DataError(f"{where} is not a CIFAR batch (a dict with b'data' and {label_key!r})")
    x, y = d[b"data"], np.asarray(d[label_key])
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072):
        what = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{where}: b'data' must be a uint8 array (N, 3072), got a {what}")
    if y.shape != (len(x),) or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"{where}: {label_key!r} must hold {len(x)} integer labels, "
                        f"got dtype {y.dtype} and shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_batches(read, files, label_key):
    xs, ys = [], []
    for fname in files:
        x, y = _batch_arrays(*read(fname), label_key)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(name, data_dir=None, label_mode="fine", download=True, trust_data_dir=True):
    """CIFAR-10 or CIFAR-100 (fine or coarse labels) -> Dataset.

    trust_data_dir=False (a data_dir read from a run's config.json, not named
    by the user): read only the official archive in data_dir, md5-checked,
    straight from the archive; an extracted folder there is never unpickled.
    """
    if name not in CIFAR:
        raise ValueError(f"name must be one of {list(CIFAR)}, got {name!r}")
    if data_dir is not None and not trust_data_dir:
        return _load_cifar_from_archive(name, data_dir, label_mode)
    return _load_cifar_with(folder_reader(locate_cifar(name, data_dir, download)), name, label_mode)


def _load_cifar_from_archive(name, data_dir, label_mode):
    spec = CIFAR[name]
    archive = os.path.join(os.path.abspath(data_dir), spec["archive"])
    if not os.path.exists(archive):
        raise DataError(
            f"{name}: the run's config.json names the data folder {data_dir}, which holds no "
            f"{spec['archive']}. minires unpickles a folder named in a config file only from the "
            f"official archive (md5-checked); pass --data-dir {data_dir} to trust the folder itself.")
    _verify_md5(archive, spec)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            return _load_cifar_with(archive_reader(tar, archive, spec), name, label_mode)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"could not read {archive}: {exc}") from exc


def _load_cifar_with(read, name, label_mode):
    """The Dataset from read(fname) -> unpickled dict, for either reader."""
    spec = CIFAR[name]
    if name == "cifar10":
        label_key, names_key = b"labels", b"label_names"
    else:
        if label_mode not in ("fine", "coarse"):
            raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
        label_key, names_key = f"{label_mode}_labels".encode(), f"{label_mode}_label_names".encode()
    x_train, y_train = _read_batches(read, spec["train"], label_key)
    x_test, y_test = _read_batches(read, spec["test"], label_key)
    meta, where = read(spec["meta"])
    try:
        classes = [c.decode() for c in meta[names_key]]
    except (TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise DataError(f"{where} is not CIFAR's class-name file (no list {names_key!r})") from None
    return Dataset(name, classes, x_train, y_train, x_test, y_test)


# ---------------------------------------------------------------- any dataset
def load_dataset(name, data_dir=None, seed=0, train_size=None, test_size=None, val_size=0,
                 label_mode="fine", trust_data_dir=True):
    """shapes | cifar10 | cifar100 -> Dataset, optionally subsampled, with an
    optional validation split carved (at random, from seed) out of the training set.
    trust_data_dir: see load_cifar (False for a data_dir read from a run's config)."""
    if name == "shapes":
        x_tr, y_tr, x_te, y_te = shapes.make_shapes(seed, train_size or 10_000, test_size or 2_000)
        ds = Dataset("shapes", list(shapes.CLASSES), x_tr, y_tr, x_te, y_te)
    elif name in CIFAR:
        ds = load_cifar(name, data_dir, label_mode, trust_data_dir=trust_data_dir)
        check_labels(ds)
        if train_size:
            ds.x_train, ds.y_train = ds.x_train[:train_size], ds.y_train[:train_size]
        if test_size:
            ds.x_test, ds.y_test = ds.x_test[:test_size], ds.y_test[:test_size]
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if val_size:
        if not 0 < val_size < len(ds.x_train):
            raise ValueError(f"val_size must be in (0, {len(ds.x_train)}), got {val_size}")
        order = np.random.default_rng([seed, 2]).permutation(len(ds.x_train))
        val, keep = order[:val_size], order[val_size:]
        ds.x_val, ds.y_val = ds.x_train[val], ds.y_train[val]
        ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    ds.mean, ds.std = channel_stats(ds.x_train)
    return ds


def check_labels(ds):
    """DataError if a label is outside [0, num_classes): caught at loading, not
    as a loss error in the middle of the first epoch."""
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        bad = (y < 0) | (y >= ds.num_classes)
        if bad.any():
            raise DataError(f"{ds.name}: {split} label {int(y[bad][0])} is outside [0, {ds.num_classes}) "
                            f"({int(bad.sum())} such labels): the data files are damaged")


# ---------------------------------------------------------------- batches
def random_crop(images, rng, padding=4):
    """Zero-pad each uint8 image (N, C, H, W) by `padding`, then crop a random
    H x W window: shifts of up to `padding` pixels, as in the ResNet paper."""
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W)
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    return windows[np.arange(n), :, dy, dx]                     # (N, C, H, W)


def random_flip(images, rng):
    """Mirror each image left-right with probability 1/2."""
    flip = rng.random(images.shape[0]) < 0.5
    out = images.copy()
    out[flip] = images[flip, :, :, ::-1]
    return out


def augment(images, rng):
    return random_flip(random_crop(images, rng), rng)


def normalize(images, mean, std):
    """uint8 (N, C, H, W) -> float32, each channel scaled to zero mean and unit std."""
    x = images.astype(np.float32) / np.float32(255)
    return (x - mean[:, None, None]) / std[:, None, None]


def minibatches(images, labels, batch_size, mean, std, rng=None, augment_data=False):
    """Yield (x float32 (B, C, H, W), y int64 (B,)). Shuffled when rng is given;
    the last batch may be smaller."""
    n = len(images)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        batch = images[idx]
        if augment_data:
            batch = augment(batch, rng)
        yield normalize(batch, mean, std), labels[idx]
