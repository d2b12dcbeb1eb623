"""Fine-tuning modes of a pretrained next-event network: which parameters a training call trains.

* ``all``: every parameter (plain training, the default);
* ``adapters``: low-rank adapters (LoRA, Hu et al. 2021) beside every ``nn.Linear`` of the
  backbone, plus the heads and the event-token embedding; the pretrained backbone is frozen;
* ``head``: only the heads and the event-token embedding.

The event-token embedding always trains: its rows are hashed categories, which mean nothing
across data sets (``seqanom_core.pretraining`` pools them per behaviour when a model is
transferred). An adapter is two bias-free ``nn.Linear`` layers (``down``: d -> rank, ``up``:
rank -> d, ``up`` starting at zero, so an adapted model starts as the pretrained one), so Opacus
computes their per-sample gradients with its ``nn.Linear`` sampler and DP-SGD adds noise to the
trainable parameters only; a frozen layer gets no hooks and no noise. ``merge_adapters`` folds
each adapter back into its layer (``W + up @ down * scale``): the model written to disk always has
the plain architecture, whatever mode trained it.
"""

from __future__ import annotations

import torch
from torch import nn

from seqanom_core.config import FINETUNE_MODES
from seqanom_core.errors import ConfigError

__all__ = ["FINETUNE_MODES", "LowRankAdapter", "apply_finetune", "merge_adapters",
           "trainable_names"]
#: the modules (top-level attributes of a NextEventModel) that read out the backbone's context
HEAD_MODULES: tuple[str, ...] = ("head_event", "cond", "cond_fc", "head_gap", "head_item", "copy")
#: the modules that train in every mode: the heads and the event-token embedding
ALWAYS_TRAINED: tuple[str, ...] = (*HEAD_MODULES, "emb.event")
ADAPTER_ALPHA = 16.0  # LoRA's alpha: an adapter's output is scaled by alpha / rank


class LowRankAdapter(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + up(down(x)) * scale``."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False,
                              device=base.weight.device, dtype=base.weight.dtype)
        self.up = nn.Linear(rank, base.out_features, bias=False,
                            device=base.weight.device, dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)  # starts as the pretrained layer
        self.scale = ADAPTER_ALPHA / rank
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus the scaled low-rank update."""
        return self.base(x) + self.up(self.down(x)) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (the adapter folded in)."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        out.weight.copy_(base.weight + (self.up.weight @ self.down.weight) * self.scale)
        if base.bias is not None:
            out.bias.copy_(base.bias)
        return out


def _always_trained(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in ALWAYS_TRAINED)


def _backbone_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every plain ``nn.Linear`` outside the embeddings and heads
    (subclasses, e.g. Opacus' ``RNNLinear`` inside a DPLSTM, are not plain layers: they are
    called once per time step, which an adapter's per-sample gradients cannot follow)."""
    found = []
    for parent_name, parent in model.named_modules():
        top = parent_name.split(".")[0]
        if top in (*HEAD_MODULES, "emb"):
            continue
        for attr, child in parent.named_children():
            if type(child) is nn.Linear and not (parent_name == "" and attr in HEAD_MODULES):
                found.append((parent, attr, child))
    return found


def apply_finetune(model: nn.Module, mode: str, rank: int = 8) -> int:
    """Set which parameters of ``model`` train in ``mode`` (in place; ``adapters`` inserts the
    adapters); returns the number of trainable parameters. ``ConfigError`` for an unknown mode, a
    rank below 1, or ``adapters`` on a backbone without plain linear layers."""
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"finetune must be one of {', '.join(FINETUNE_MODES)}, not {mode!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"adapter rank must be a positive integer, not {rank!r}")
    if mode == "all":
        for p in model.parameters():
            p.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        p.requires_grad_(_always_trained(name))
    if mode == "adapters":
        linears = _backbone_linears(model)
        if not linears:
            kind = getattr(getattr(model, "config", None), "kind", type(model).__name__)
            raise ConfigError(f"finetune adapters: the {kind} backbone has no plain linear layers "
                              f"to adapt (use --finetune head or all)")
        for parent, attr, layer in linears:
            setattr(parent, attr, LowRankAdapter(layer, rank))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer and make every parameter trainable again: ``model`` (in
    place) has the plain architecture and state-dict names of a model built by ``build_model``."""
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, LowRankAdapter):
                setattr(parent, attr, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_names(model: nn.Module) -> list[str]:
    """The state-dict names of the parameters that train (sorted)."""
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)
