"""A per-layer table of a model, like Keras's model.summary().

MACs count the multiply-accumulates of convolutions and linear layers for
one image (batchnorm, ReLU, pooling and adds are cheap by comparison and
are not counted), the usual convention in papers.
"""
from dataclasses import dataclass

import numpy as np

from . import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


def _macs(module, x_shape, out_shape):
    if isinstance(module, nn.Conv2d):
        c, kh, kw = module.weight.data.shape[1:]
        return int(np.prod(out_shape[1:])) * c * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def layer_table(model, image_shape=(3, 32, 32)):
    """Run one zero image through the model, in eval mode, recording each leaf module.

    Returns a list of LayerRow in execution order.
    """
    rows = []
    # Identity shortcuts do nothing worth a row.
    leaves = [(name, m) for name, m in model.named_modules()
              if not m.children() and not isinstance(m, nn.Identity)]

    def recorder(name, module):
        original = type(module).forward

        def forward(x):
            out = original(module, x)
            params = sum(p.data.size for p in module._parameters.values())
            rows.append(LayerRow(name, type(module).__name__, (None,) + out.shape[1:], params,
                                 _macs(module, x.shape, out.shape)))
            return out
        return forward

    was_training = model.training
    model.eval()
    try:
        for name, m in leaves:
            m.forward = recorder(name, m)     # an instance attribute shadows the method
        model(np.zeros((1,) + tuple(image_shape), dtype=np.float32))
    finally:
        for _, m in leaves:
            m.__dict__.pop("forward", None)
        model.train(was_training)
    return rows


def totals(model, image_shape=(3, 32, 32)):
    rows = layer_table(model, image_shape)
    return model.num_parameters(), sum(r.macs for r in rows)


def format_summary(model, image_shape=(3, 32, 32)):
    rows = layer_table(model, image_shape)
    lines = [f"{'layer':<34} {'type':<16} {'output shape':<20} {'params':>11} {'MACs':>14}",
             "=" * 99]
    for r in rows:
        lines.append(f"{r.name:<34} {r.kind:<16} {str(r.output_shape):<20} {r.params:>11,} {r.macs:>14,}")
    lines.append("=" * 99)
    name = getattr(model, "name", type(model).__name__)
    lines.append(f"{name}: {model.num_parameters():,} parameters, "
                 f"{sum(r.macs for r in rows):,} MACs per {image_shape[1]}x{image_shape[2]} image")
    return "\n".join(lines)
