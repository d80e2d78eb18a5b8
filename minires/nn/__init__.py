"""Modules: thin, stateful wrappers over minires.functional."""
from .activation import Dropout, ReLU
from .batchnorm import BatchNorm2d, BatchNormReLU2d
from .conv import Conv2d
from .fuse import conv_bn, conv_relu_bn
from .linear import Flatten, Linear
from .module import Identity, Module, Parameter, Sequential
from .pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .recompute import release_input, release_output
from .residual import ResidualBlock

__all__ = ["Module", "Parameter", "Sequential", "Identity", "Conv2d", "BatchNorm2d", "BatchNormReLU2d", "ReLU",
           "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Dropout", "Linear", "Flatten",
           "ResidualBlock", "release_input", "release_output", "conv_bn", "conv_relu_bn"]
