"""The model families for 32x32 images, built from minires.nn modules."""
from .bottleneck import Bottleneck, BottleneckResNet, bottleneck
from .imagenet import ImageNetResNet18, ImageNetResNet50, imagenet_resnet18, imagenet_resnet50
from .io import load, save
from .registry import available, build
from .resnet import BasicBlock, CifarResNet, PlainBlock, plain, resnet, seed_wide
from .seed_cnn import SeedCNN, seed_cnn
from .wide import WideBlock, WideResNet, wide_resnet

__all__ = ["build", "available", "save", "load", "resnet", "plain", "seed_wide", "bottleneck",
           "wide_resnet", "seed_cnn", "imagenet_resnet18", "imagenet_resnet50", "BasicBlock",
           "PlainBlock", "Bottleneck", "WideBlock", "CifarResNet", "BottleneckResNet", "WideResNet",
           "SeedCNN", "ImageNetResNet18", "ImageNetResNet50"]
