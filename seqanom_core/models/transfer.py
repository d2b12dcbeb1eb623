"""Where a model runs and how its weights travel: device selection, and the model's state as
named NumPy arrays (what a site sends, a server aggregates and checks, a model file holds)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seqanom_core.errors import ConfigError, ModelFileError


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


def model_arrays(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The model's state as named NumPy arrays (what a site sends and a server aggregates):
    all of it, or only the entries ``names`` (a fine-tuning mode's trainable ones)."""
    state = model.state_dict()
    keys = state.keys() if names is None else names
    return {k: state[k].detach().cpu().numpy().copy() for k in keys}


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


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray],
                names: Iterable[str] | None = None) -> None:
    """Load named arrays into ``model`` after checking names, shapes and finiteness: the whole
    state, or exactly the entries ``names`` (the rest of the model is left as it is)."""
    state = model.state_dict()
    keys = list(state) if names is None else list(names)
    problems = check_arrays({k: tuple(state[k].shape) for k in keys}, arrays)
    if problems:
        raise ModelFileError("weights do not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for k in keys:
            state[k].copy_(torch.from_numpy(np.ascontiguousarray(arrays[k])))


def check_weights_file(path: Path, model: nn.Module) -> None:
    """Compare a safetensors file's header (names, shapes) with ``model``'s state dict before its
    data is read: a tensor the model does not have, or of another shape, is a one-line
    ``ModelFileError`` naming the file and the tensor, so no oversized tensor is ever loaded."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="numpy") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors' own error types: a damaged or truncated header
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise ModelFileError(f"{path}: not a readable safetensors file: {lines[0].strip()}") from err
    for name, shape in found.items():
        if name not in expected:
            raise ModelFileError(f"{path}: tensor '{name}' is not part of the configured model "
                                 f"({len(found)} tensors in the file, {len(expected)} in the model)")
        if shape != expected[name]:
            raise ModelFileError(f"{path}: tensor '{name}' has shape {list(shape)}, the "
                                 f"configured model's is {list(expected[name])}")
