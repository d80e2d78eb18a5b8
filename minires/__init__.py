"""minires: ResNets for 32x32 images, from scratch in NumPy and Cython.

Every layer's forward and backward are written by hand, side by side, and
checked numerically and against PyTorch.
"""
__version__ = "0.1.0"
