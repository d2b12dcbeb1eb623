"""The backbone registry: which network class builds each model kind (``ModelConfig.kind``).

A backbone is a ``NextEventModel`` subclass that creates its layers (``build_backbone``) and
contextualises the embedded inputs (``backbone``); ``@register_backbone("name")`` on the class
makes ``name`` a model kind, as Opacus registers a grad sampler per layer type. The kind is
stated only there: ``ModelConfig`` validates against the registry, ``NextEventModel(config,
vocab)`` and ``build_model`` build the registered class, the detectors (``make_detector``,
``seqanom_core.detector.DETECTORS``) and the console's ``--model`` choices come from it. Adding a
backbone is one new module under ``seqanom_core/models/``, imported by the package's
``__init__`` (so that importing ``seqanom_core.models`` registers every backbone).

This module itself imports neither torch nor the backbones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from seqanom_core.errors import ConfigError

if TYPE_CHECKING:
    from seqanom_core.models.network import NextEventModel

M = TypeVar("M", bound="type[NextEventModel]")

_BACKBONES: dict[str, type[NextEventModel]] = {}


def register_backbone(kind: str) -> Callable[[M], M]:
    """Class decorator: the decorated ``NextEventModel`` subclass builds model kind ``kind``.

    The class must set ``title`` (a few words: the detector's docstring) and ``detector_name``
    (the name of its detector class); ``kind`` is set here.
    """

    def register(cls: M) -> M:
        for attr in ("title", "detector_name"):
            if not getattr(cls, attr, None):
                raise TypeError(f"backbone {cls.__qualname__} must set {attr}")
        held = _BACKBONES.get(kind)
        if held is not None and (held.__module__, held.__qualname__) != (cls.__module__,
                                                                         cls.__qualname__):
            raise ValueError(f"model kind {kind!r} is already registered by {held.__qualname__}")
        cls.kind = kind
        _BACKBONES[kind] = cls
        return cls

    return register


def backbone_kinds() -> tuple[str, ...]:
    """The registered model kinds, in registration order."""
    return tuple(_BACKBONES)


def get_backbone(kind: str) -> type[NextEventModel]:
    """The network class of a model kind (``ConfigError`` naming the choices if unknown)."""
    try:
        return _BACKBONES[kind]
    except (KeyError, TypeError):
        names = [repr(k) for k in _BACKBONES]
        choices = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise ConfigError(f"model kind must be {choices}, not {kind!r}") from None
