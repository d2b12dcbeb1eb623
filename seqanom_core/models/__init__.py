"""Next-event networks (``network``), their registered backbones (``transformer``, ``lstm``,
``mingru``; see ``registry``), device selection and weight transfer (``transfer``).

Importing this package imports every backbone module, which registers its model kind.
"""

from seqanom_core.models.network import COPY_FEATURES, NextEventModel, build_model, check_model_size
from seqanom_core.models.registry import backbone_kinds, get_backbone, register_backbone
from seqanom_core.models.transfer import (
    arrays_digest,
    check_arrays,
    check_weights_file,
    load_arrays,
    model_arrays,
    resolve_device,
)

# the built-in backbones: importing a module registers its kind. The order is the order of the
# choices (console --model, error messages), so keep the default kind first.
# isort: off
from seqanom_core.models.transformer import (
    CausalSelfAttention,
    TransformerBlock,
    TransformerNextEventModel,
)
from seqanom_core.models.lstm import LSTMNextEventModel
from seqanom_core.models.mingru import MinGRUBlock, MinGRUNextEventModel
# isort: on

__all__ = [
    "COPY_FEATURES",
    "CausalSelfAttention",
    "LSTMNextEventModel",
    "MinGRUBlock",
    "MinGRUNextEventModel",
    "NextEventModel",
    "TransformerBlock",
    "TransformerNextEventModel",
    "arrays_digest",
    "backbone_kinds",
    "build_model",
    "check_arrays",
    "check_model_size",
    "check_weights_file",
    "get_backbone",
    "load_arrays",
    "model_arrays",
    "register_backbone",
    "resolve_device",
]
