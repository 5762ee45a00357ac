"""Models of the training harness, registered by name in :data:`pyfast.registry.MODELS`.

Every builder takes ``(num_classes, in_channels=3, image_size=32, **options)`` and returns an ``nn.Module`` mapping
``[B, in_channels, image_size, image_size]`` images to logits ``[B, num_classes]``.
"""

from pyfast.models.astroformer import Astroformer, astroformer
from pyfast.models.coswin import CoSwin, coswin
from pyfast.models.gcab import GCABViT, gcab_vit
from pyfast.models.resnet import ResNet, resnet18
from pyfast.models.snn import ConvSNN, MultiStep, snn_small
from pyfast.models.spectformer import SpectFormer, spectformer
from pyfast.models.vgg import VGG16, SpikingVGG16, fuse_bn, iir_neuron
from pyfast.models.vit import VisionTransformer, vit_small, vit_tiny

__all__ = [
    "VGG16",
    "Astroformer",
    "CoSwin",
    "ConvSNN",
    "GCABViT",
    "MultiStep",
    "ResNet",
    "SpectFormer",
    "SpikingVGG16",
    "VisionTransformer",
    "astroformer",
    "coswin",
    "fuse_bn",
    "gcab_vit",
    "iir_neuron",
    "resnet18",
    "snn_small",
    "spectformer",
    "vit_small",
    "vit_tiny",
]
