"""`minires bench --epoch`: one CIFAR-10 epoch end to end, minires against PyTorch.

What a user of `minires train` waits for: the data read, augmentation,
every training step and the test-set evaluation. minires runs exactly
`minires train` (train.train, checkpoint included); PyTorch runs the same
model (minires.torch_reference) and recipe in its usual form: a DataLoader
whose dataset crops and flips each image, SGD with the same learning rate,
momentum and weight decay, and an evaluation under no_grad. Both read the
files through minires.data, so the ratio measures the loops, not the reader.
Each library runs in its own process (bench._run_worker) with the same
number of threads.
"""
import tempfile
import time

from .. import runtime

RECIPE = dict(batch_size=128, lr=0.1, momentum=0.9)


def minires_epoch(model_name, data_dir, images, threads):
    """Seconds for `minires train --epochs 1` on the first `images` training images."""
    from ..train import TrainConfig, train
    runtime.setup()
    config = TrainConfig(model=model_name, dataset="cifar10", epochs=1, data_dir=data_dir, train_size=images,
                         threads=threads, **RECIPE)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        train(config, out, progress=False, verbose=False)
        return time.perf_counter() - t


def torch_epoch(model_name, data_dir, images, threads):
    """Seconds for the same epoch in PyTorch, from the data read to the test accuracy."""
    import torch
    from torch.utils.data import DataLoader

    from ..data import load_dataset
    from ..torch_reference import torch_twin
    from ..train import default_weight_decay
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    ds = load_dataset("cifar10", data_dir, train_size=images)
    mean, std = torch.tensor(ds.mean).view(3, 1, 1), torch.tensor(ds.std).view(3, 1, 1)
    loader = DataLoader(_CropFlip(torch, ds.x_train, ds.y_train, mean, std), batch_size=RECIPE["batch_size"],
                        shuffle=True, num_workers=0)
    model = torch_twin(torch, model_name, {})
    steps = len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                          weight_decay=default_weight_decay(model_name))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x_test = (torch.from_numpy(ds.x_test).float() / 255 - mean) / std
    with torch.no_grad():
        correct = sum(int((model(xb).argmax(1) == yb).sum())
                      for xb, yb in zip(x_test.split(500), torch.from_numpy(ds.y_test).split(500)))
    assert 0 <= correct <= len(ds.y_test)
    return time.perf_counter() - t


class _CropFlip:
    """A map-style dataset: uint8 image -> zero-pad 4, random 32x32 crop, random
    mirror, normalise (what torchvision's RandomCrop(32, 4), RandomHorizontalFlip
    and Normalize do), as float32 (C, H, W)."""

    def __init__(self, torch, images, labels, mean, std):
        self.torch, self.images, self.labels, self.mean, self.std = torch, images, labels, mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        torch = self.torch
        img = torch.nn.functional.pad(torch.from_numpy(self.images[i]), (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        img = img[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img.float() / 255 - self.mean) / self.std, int(self.labels[i])
