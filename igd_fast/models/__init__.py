"""IGD models: :class:`ModelConfig`, :class:`IGD` (encoder, decoder, critic,
descriptor), the Gaussian descriptor and encoder pre-training helpers (KD, SimCLR-style SSL)."""

from .config import KINDS, ModelConfig
from .descriptor import GaussianDescriptor
from .igd import IGD
from .nets import BasicBlock, Critic, Decoder, Encoder, ResNetTrunk, UpBlock
from .pretrain import distill_encoder, init_encoder, load_trunk, read_resnet18_state_dict, teacher_from_file
from .ssl import SSL_FORMAT, AugmentConfig, ProjectionHead, augment, nt_xent

__all__ = [
    "IGD",
    "SSL_FORMAT",
    "AugmentConfig",
    "ProjectionHead",
    "augment",
    "init_encoder",
    "nt_xent",
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
