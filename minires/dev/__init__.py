"""Development tools, not needed to train or to learn from minires.

minires.dev.bench: `minires bench`, the speed comparison with PyTorch (torch
is imported only inside its worker processes, so it runs without torch and
times minires alone).
"""
