"""Next-event networks: a DP-LSTM and a causal Transformer built only from Opacus-supported layers.

Both share one shape: channel embeddings in, a backbone, then three heads. The event head predicts
the next event token (including the end of the sequence); the gap and item heads predict the next
event's time-gap bucket and item state *given* that event (teacher-forced), so that e.g. "a buy
of an item never viewed" is one surprising prediction, not two ordinary ones.

History copy (``ModelConfig.history_copy``): shoppers mostly stay in categories they already
browsed, and learning "repeat what this shopper did" through the backbone alone takes more data
than a site has, above all under DP noise. So the event logits also get a copy term, a cache
language model in the sense of Grave et al. (2017): for every candidate token, four features of
the shopper's history up to the current position (the candidate is the current event; how often
it occurred; its category is the current event's; how often its category occurred), weighted per
behaviour group by weights one ``nn.Linear`` predicts from the context (its bias is the
context-free part; its weight starts at zero), so Opacus computes their per-sample gradients as
usual. The features are computed per (group, category) and broadcast, never per token x feature.
On the Taobao split (3 training seeds each) it raised AUROC by about 0.02 without DP and 0.03
(Transformer) / 0.04 (LSTM) with DP at epsilon 8.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqanom_core.config import ModelConfig
from seqanom_core.errors import ConfigError, ModelFileError
from seqanom_core.sequences import CHANNELS, N_SPECIAL

COPY_FEATURES = 4  # history features per candidate token (see copy_features)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention from plain ``nn.Linear`` layers (per-sample-gradient safe)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(batch, time, d)``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(batch, time, d)``."""
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class NextEventModel(nn.Module):
    """Embeddings + backbone + factorised next-event heads."""

    def __init__(self, config: ModelConfig, vocab: dict[str, int]) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.vocab = dict(vocab)
        self.emb = nn.ModuleDict({c: nn.Embedding(vocab[c], d) for c in CHANNELS})
        self.drop = nn.Dropout(config.dropout)
        if config.kind == "transformer":
            self.pos = nn.Embedding(config.max_len, d)
            self.blocks = nn.ModuleList(
                TransformerBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
            )
            self.ln_f = nn.LayerNorm(d)
        else:
            from opacus.layers import DPLSTM  # imported here: only the LSTM needs opacus

            self.lstm = DPLSTM(d, d, num_layers=config.n_layers, batch_first=True,
                               dropout=config.dropout if config.n_layers > 1 else 0.0)
            self.ln_f = nn.LayerNorm(d)
        self.head_event = nn.Linear(d, vocab["event"])
        self.cond = nn.Embedding(vocab["event"], d)
        self.cond_fc = nn.Linear(d, d)
        self.head_gap = nn.Linear(d, vocab["gap"])
        self.head_item = nn.Linear(d, vocab["item"])
        if config.history_copy:
            self._init_copy(d, vocab["event"], int(vocab.get("event_groups", 1)))

    def _init_copy(self, d: int, n_event: int, groups: int) -> None:
        """The copy layer: per position, a weight for each history feature and behaviour group,
        predicted from the context; its bias is the context-free part.

        Event token ``N_SPECIAL + g * C + c`` is category bucket ``c`` of behaviour group ``g``
        (pre-tokenised input: one group, the token is its own "category")."""
        if groups < 1 or (n_event - N_SPECIAL) % groups:
            raise ConfigError(f"event vocabulary of {n_event} does not split into {groups} groups")
        self.copy_groups = groups
        self.copy_cats = (n_event - N_SPECIAL) // groups
        self.copy = nn.Linear(d, COPY_FEATURES * groups)
        nn.init.zeros_(self.copy.weight)  # starts context-free
        nn.init.uniform_(self.copy.bias, -0.5, 0.5)

    def copy_features(self, events: torch.Tensor) -> list[torch.Tensor]:
        """History features of every candidate next token, from the input events ``(batch,
        time)`` up to and including each position: the candidate is the current event, how often
        it occurred (log1p), each ``(batch, time, groups, C)``; its category is the current
        event's, how often its category occurred (log1p), each ``(batch, time, 1, C)``."""
        b, t = events.shape
        real = (events >= N_SPECIAL).unsqueeze(-1).float()
        token = real.new_zeros(b, t, self.copy_groups * self.copy_cats).scatter_(
            -1, (events - N_SPECIAL).clamp(min=0).unsqueeze(-1), real)
        token = token.view(b, t, self.copy_groups, self.copy_cats)
        category = token.sum(2, keepdim=True)
        return [token, torch.log1p(token.cumsum(1)), category, torch.log1p(category.cumsum(1))]

    def copy_logits(self, events: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Copy term of the event logits ``(batch, time, V)``: each candidate's history features,
        weighted by the weights the context ``h`` gives its behaviour group (0 for the special
        tokens, END included)."""
        b, t = events.shape
        weights = self.copy(h).view(b, t, COPY_FEATURES, self.copy_groups, 1)
        out = sum(f * weights[:, :, k] for k, f in enumerate(self.copy_features(events)))
        return F.pad(out.flatten(2), (N_SPECIAL, 0))

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualise embedded inputs ``(batch, time, d)``; position t sees only <= t."""
        if self.config.kind == "transformer":
            b, t = x.shape[:2]
            # positions expanded to (batch, time) so that per-sample gradients see the batch dim
            x = x + self.pos(torch.arange(t, device=x.device).expand(b, t))
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x)
        out, _ = self.lstm(x)
        return self.ln_f(out)

    def forward(
        self, inputs: dict[str, torch.Tensor], next_event: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Logits per channel ``(batch, time, vocab_c)`` from inputs ``(batch, time)`` per channel.

        ``next_event`` ``(batch, time)`` is the true next event token, which conditions the gap and
        item heads.
        """
        x = sum(self.emb[c](inputs[c]) for c in CHANNELS)
        h = self.backbone(self.drop(x))
        hc = F.gelu(self.cond_fc(h + self.cond(next_event)))
        event_logits = self.head_event(h)
        if self.config.history_copy:
            event_logits = event_logits + self.copy_logits(inputs["event"], h)
        return {"event": event_logits, "gap": self.head_gap(hc), "item": self.head_item(hc)}


def build_model(config: ModelConfig, vocab: dict[str, int]) -> NextEventModel:
    """The one builder used everywhere (library, sites, server), so weights always load."""
    return NextEventModel(config, vocab)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: no CUDA device is available here (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r}: only cpu and cuda devices are supported")
    return device


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as named NumPy arrays (what a site sends and a server aggregates)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, shapes and bytes of named arrays: the identity of a model."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_arrays(reference: dict[str, tuple[int, ...]], arrays: dict[str, np.ndarray]) -> list[str]:
    """Problems of ``arrays`` against reference shapes: missing/extra keys, shapes, NaN/Inf."""
    problems = []
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing:
        problems.append(f"missing arrays {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected arrays {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, shape in reference.items():
        a = arrays.get(k)
        if a is None:
            continue
        if tuple(a.shape) != tuple(shape):
            problems.append(f"{k}: shape {tuple(a.shape)} != {tuple(shape)}")
        elif np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            problems.append(f"{k}: contains NaN or Inf")
    return problems


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``model`` after checking names, shapes and finiteness."""
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = check_arrays(ref, arrays)
    if problems:
        raise ModelFileError("weights do not fit the model: " + "; ".join(problems))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
