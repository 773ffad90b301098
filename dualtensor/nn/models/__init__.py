"""The paper's networks. Each exposes ``blocks()``: the partition used by activity perturbation
(composing the blocks in order is the model's forward pass)."""
from .mlp import MLP, mlp  # noqa: F401
from .resnet import BasicBlock, ResNet, resnet18  # noqa: F401
from .vit import ViT, vit  # noqa: F401

MODELS = {"mlp": mlp, "resnet18": resnet18, "vit": vit}
