"""Training budgets that mean the same on every machine: compute, not hours.

A budget of B "resnet-20 epochs" is the training compute of B epochs of
resnet-20 (40.55M MACs per 32x32 image with 10 classes). A model with M
MACs per image gets the same compute by seeing

    images = B * train_size * macs(resnet-20) / M

training images, that is total_steps = round(images / batch_size) SGD steps:
seed-cnn (7.7M MACs) sees 5.3x as many images as resnet-20, wrn-16-4 (392.6M)
about a tenth. MACs count the multiply-accumulates of convs and linear
layers in the forward pass (minires.summary); backward costs about twice
the forward for every model, so the ratio holds for a whole training step.
"""
import functools
import math

REFERENCE_MODEL = "resnet-20"


@functools.lru_cache(maxsize=None)
def _macs(model_name, num_classes, options):
    from . import models
    from .summary import totals
    return totals(models.build(model_name, num_classes, rng=0, **dict(options)))[1]


def macs_per_image(model_name, num_classes=10, options=None):
    """Forward MACs of one 32x32 image through model_name built with options (int)."""
    return _macs(model_name, num_classes, tuple(sorted((options or {}).items())))


def budget_images(budget, model_name, options=None, num_classes=10, train_size=50_000):
    """Training images the model sees under a budget of `budget` resnet-20 epochs (float).

    The reference is full-size resnet-20 with the same num_classes, whatever
    width_scale the model itself has."""
    if budget <= 0:
        raise ValueError(f"budget must be > 0 resnet-20 epochs, got {budget}")
    ratio = macs_per_image(REFERENCE_MODEL, num_classes) / macs_per_image(model_name, num_classes, options)
    return budget * train_size * ratio


def budget_steps(budget, model_name, options=None, num_classes=10, train_size=50_000, batch_size=128):
    """SGD steps of batch_size images that spend the budget: round(images / batch_size), at least 1."""
    return max(1, round(budget_images(budget, model_name, options, num_classes, train_size) / batch_size))


def budget_epochs(budget, model_name, options=None, num_classes=10, train_size=50_000, batch_size=128):
    """(total_steps, epochs the loop runs: the last one may be partial)."""
    steps = budget_steps(budget, model_name, options, num_classes, train_size, batch_size)
    return steps, math.ceil(steps / math.ceil(train_size / batch_size))
