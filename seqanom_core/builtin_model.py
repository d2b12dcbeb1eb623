"""The pretrained model that ships with seqanom, named ``builtin`` wherever a pretrained model
directory is asked for (``train --init``, ``simulate --pretrained``, the run config's
``pretrained``).

It is the next-event model pretrained on shoppers of the built-in generator (``seqanom pretrain
--synthetic``; no DP, no real shopper: ``metadata.json`` says with what), in the shape of the
simulation's model. It is one JSON file, ``pretrained/builtin.json``, because Flower's app
bundle carries text files only (.py, .json, ...): that is how it reaches every site with the
code, and every site reads the same weights (the run config's ``pretrained-digest`` checks it).
The model directory's JSON files are kept as they are and its safetensors weights are
base64-encoded; ``unpacked`` writes them out as a model directory once per process.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import shutil
import tempfile
from pathlib import Path

from seqanom_core.errors import ConfigError

BUILTIN = "builtin"
BUILTIN_FILE = Path(__file__).resolve().parent / "pretrained" / "builtin.json"
TEXT_FILES = ("config.json", "calibration.json", "metadata.json")
WEIGHTS_FILE = "model.safetensors"


def pack(model_dir: str | Path, out: str | Path = BUILTIN_FILE) -> Path:
    """Write the model directory ``model_dir`` as one JSON file (``out``)."""
    d = Path(model_dir)
    doc = {name: json.loads((d / name).read_text()) for name in TEXT_FILES}
    doc[WEIGHTS_FILE] = base64.b64encode((d / WEIGHTS_FILE).read_bytes()).decode("ascii")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return out


def unpack(packed: str | Path, model_dir: str | Path) -> Path:
    """Write the JSON file ``packed`` (``pack``) out as the model directory ``model_dir``."""
    try:
        doc = json.loads(Path(packed).read_text())
        weights = base64.b64decode(doc[WEIGHTS_FILE], validate=True)
        texts = {name: doc[name] for name in TEXT_FILES}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{packed}: not a packed model ({type(err).__name__}: {err})") from None
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name, content in texts.items():
        (d / name).write_text(json.dumps(content, indent=2))
    (d / WEIGHTS_FILE).write_bytes(weights)
    return d


@functools.lru_cache(maxsize=1)
def unpacked() -> Path:
    """The built-in model as a model directory (a temporary one, removed at exit)."""
    tmp = Path(tempfile.mkdtemp(prefix="seqanom-builtin-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return unpack(BUILTIN_FILE, tmp / BUILTIN)


def resolve(path: str | Path) -> Path:
    """The model directory a pretrained-model argument names: ``builtin``, or a path."""
    return unpacked() if str(path) == BUILTIN else Path(path).expanduser()
