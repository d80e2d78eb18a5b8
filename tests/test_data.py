"""Loaders (CIFAR archives built here in the official format), shapes, augmentation."""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from minires import data, shapes


def _cifar_archive(tmp_path, name="cifar10", n_train=20, n_test=10):
    """A small archive in the official layout: pickled dicts of uint8 rows."""
    spec = data.CIFAR[name]
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(fname, obj):
            payload = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{spec['folder']}/{fname}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if name == "cifar10":
            per = n_train // 5
            for f in spec["train"]:
                add(f, {b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                        b"labels": list(rng.integers(0, 10, per))})
            add("test_batch", {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                               b"labels": list(rng.integers(0, 10, n_test))})
            add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
        else:
            for f, n in (("train", n_train), ("test", n_test)):
                add(f, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                        b"fine_labels": list(rng.integers(0, 100, n)),
                        b"coarse_labels": list(rng.integers(0, 20, n))})
            add("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"g{i}".encode() for i in range(20)]})
    raw = buf.getvalue()
    path = tmp_path / spec["archive"]
    path.write_bytes(raw)
    return path, hashlib.md5(raw).hexdigest()


@pytest.fixture
def fake_md5(monkeypatch):
    """Accept the test archive's own checksum in place of the official one."""
    def use(name, md5):
        monkeypatch.setitem(data.CIFAR, name, dict(data.CIFAR[name], md5=md5))
    return use


def test_cifar10_archive_accepted_and_extracted(tmp_path, fake_md5):
    path, md5 = _cifar_archive(tmp_path)
    fake_md5("cifar10", md5)
    ds = data.load_cifar("cifar10", tmp_path, download=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10, 3, 32, 32) and ds.classes[3] == "c3"
    assert (tmp_path / "cifar-10-batches-py").is_dir()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".extract")]
    # the extracted folder is read directly next time, even without the archive
    path.unlink()
    assert data.load_cifar("cifar10", tmp_path, download=False).x_train.shape[0] == 20


def test_cifar100_fine_and_coarse(tmp_path, fake_md5):
    _, md5 = _cifar_archive(tmp_path, "cifar100")
    fake_md5("cifar100", md5)
    fine = data.load_cifar("cifar100", tmp_path, download=False)
    coarse = data.load_cifar("cifar100", tmp_path, label_mode="coarse", download=False)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.y_train.max() < 100 and coarse.y_train.max() < 20


def test_checksum_mismatch_is_rejected_and_nothing_extracted(tmp_path):
    _cifar_archive(tmp_path)  # the real md5 in data.CIFAR does not match this archive
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_cifar("cifar10", tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_truncated_archive(tmp_path, fake_md5):
    path, _ = _cifar_archive(tmp_path)
    raw = path.read_bytes()[:500]
    path.write_bytes(raw)
    fake_md5("cifar10", hashlib.md5(raw).hexdigest())  # even if the checksum "matched"
    with pytest.raises(data.DataError, match="could not extract"):
        data.load_cifar("cifar10", tmp_path, download=False)
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz"]


def test_missing_data_offline_says_what_to_put_where(tmp_path, monkeypatch):
    def offline(url, dest):
        raise OSError("network unreachable")
    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(data.DataError) as err:
        data.load_cifar("cifar10", tmp_path)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert str(tmp_path) in msg


def test_shapes_is_deterministic_balanced_and_varied():
    a = shapes.make_shapes(seed=3, train_size=200, test_size=50)
    b = shapes.make_shapes(seed=3, train_size=200, test_size=50)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    x, y = a[0], a[1]
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [20] * 10
    assert not np.array_equal(a[0][:50], a[2])  # test split is a different stream
    assert x.std() > 40


def test_validation_split_and_normalisation():
    ds = data.load_dataset("shapes", train_size=300, test_size=50, val_size=60)
    assert len(ds.x_train) == 240 and len(ds.x_val) == 60
    x, _ = next(data.minibatches(ds.x_train, ds.y_train, 240, ds.mean, ds.std))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_random_crop_stays_inside_the_padding():
    rng = np.random.default_rng(0)
    img = np.arange(1, 3 * 32 * 32 + 1, dtype=np.int64).reshape(1, 3, 32, 32).repeat(64, 0)
    crops = data.random_crop(img, rng)
    assert crops.shape == img.shape
    for c in crops:
        # every crop is the image shifted by at most 4 pixels, zeros filling in
        nz = np.argwhere(c[0] > 0)
        (r0, c0), (r1, c1) = nz.min(0), nz.max(0)
        assert r1 - r0 >= 27 and c1 - c0 >= 27
        dy, dx = c[0][r0, c0] // 32 - r0, c[0][r0, c0] % 32 - 1 - c0
        assert abs(dy) <= 4 and abs(dx) <= 4
        np.testing.assert_array_equal(c[:, r0:r1 + 1, c0:c1 + 1],
                                      img[0][:, r0 + dy:r1 + dy + 1, c0 + dx:c1 + dx + 1])


def test_flips_really_flip():
    rng = np.random.default_rng(1)
    img = np.random.default_rng(0).integers(0, 255, (200, 3, 8, 8), dtype=np.uint8)
    out = data.random_flip(img, rng)
    flipped = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, img)])
    same = np.array([np.array_equal(o, i) for o, i in zip(out, img)])
    assert np.all(flipped | same) and 60 < flipped.sum() < 140


def test_augmentation_off_is_identity():
    """Shuffled batches without augmentation are exactly the normalised images;
    with augmentation (same rng, so the same order) they are not."""
    ds = data.load_dataset("shapes", train_size=100, test_size=10)
    batches = lambda aug: list(data.minibatches(ds.x_train, ds.y_train, 32, ds.mean, ds.std,
                                                rng=np.random.default_rng(7), augment_data=aug))
    off, on = batches(False), batches(True)
    order = np.random.default_rng(7).permutation(100)      # minibatches draws the order first
    for i, ((x_off, y_off), (x_on, y_on)) in enumerate(zip(off, on)):
        idx = order[32 * i:32 * (i + 1)]
        np.testing.assert_array_equal(x_off, data.normalize(ds.x_train[idx], ds.mean, ds.std))
        np.testing.assert_array_equal(y_off, ds.y_train[idx])
        np.testing.assert_array_equal(y_on, y_off)
    assert len(off) == 4 and not np.array_equal(off[0][0], on[0][0])


def test_shuffling_follows_the_rng():
    x, y = np.zeros((10, 3, 4, 4), np.uint8), np.arange(10)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    a = [b for _, b in data.minibatches(x, y, 4, mean, std, rng=np.random.default_rng(5))]
    b = [b for _, b in data.minibatches(x, y, 4, mean, std, rng=np.random.default_rng(5))]
    assert [list(v) for v in a] == [list(v) for v in b] and sorted(np.concatenate(a)) == list(range(10))
    assert [len(v) for v in a] == [4, 4, 2]


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    """The download path, fed from a local file:// URL (no network here)."""
    src = tmp_path / "src"
    src.mkdir()
    path, md5 = _cifar_archive(src)
    monkeypatch.setitem(data.CIFAR, "cifar10", dict(data.CIFAR["cifar10"], md5=md5, url=path.as_uri()))
    cache = tmp_path / "cache"
    ds = data.load_cifar("cifar10", cache)
    assert ds.x_train.shape == (20, 3, 32, 32)
    assert (cache / "cifar-10-python.tar.gz").exists() and (cache / "cifar-10-batches-py").is_dir()
    assert not list(cache.glob(".tmp-*"))


def test_train_on_cifar100_coarse(tmp_path, fake_md5):
    """The whole path from an official-format archive to a trained 20-class model."""
    from minires.train import TrainConfig, train
    _, md5 = _cifar_archive(tmp_path, "cifar100", n_train=40, n_test=10)
    fake_md5("cifar100", md5)
    cfg = TrainConfig(model="resnet-8", dataset="cifar100", data_dir=str(tmp_path), label_mode="coarse",
                      epochs=1, batch_size=20, width_scale=0.25)
    history = train(cfg, str(tmp_path / "run"), progress=False, verbose=False)
    assert len(history) == 1
    from minires import models
    assert models.load(str(tmp_path / "run" / "best.npz")).options["num_classes"] == 20
