"""IGD models: :class:`ModelConfig`, :class:`IGD` (encoder, decoder, critic,
descriptor), the Gaussian descriptor and encoder pre-training helpers."""

from .config import KINDS, ModelConfig
from .descriptor import GaussianDescriptor
from .igd import IGD
from .nets import BasicBlock, Critic, Decoder, Encoder, ResNetTrunk, UpBlock
from .pretrain import distill_encoder, load_trunk, read_resnet18_state_dict, teacher_from_file

__all__ = [
    "IGD",
    "KINDS",
    "BasicBlock",
    "Critic",
    "Decoder",
    "Encoder",
    "GaussianDescriptor",
    "ModelConfig",
    "ResNetTrunk",
    "UpBlock",
    "distill_encoder",
    "load_trunk",
    "read_resnet18_state_dict",
    "teacher_from_file",
]
