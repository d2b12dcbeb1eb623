"""Column mappings of the built-in input formats, and the generic mapping mini-language.

A :class:`FormatSpec` (``spec``) says which source column feeds each canonical event field
(``seqanom_core.schema.EVENT_SCHEMA``), how behaviour values and timestamps are written, and
how a file without a header lays its columns out. All built-in formats live in ``registry``;
``mapping`` parses the generic mapping mini-language (``parse_mapping``, documented there) for
sites whose logs use their own columns.
"""

from __future__ import annotations

from seqanom_core.formats.mapping import parse_mapping
from seqanom_core.formats.registry import get_format, list_formats
from seqanom_core.formats.spec import MAPPED_FIELDS, TIME_KINDS, FormatSpec, normalize_name

__all__ = [
    "MAPPED_FIELDS",
    "TIME_KINDS",
    "FormatSpec",
    "get_format",
    "list_formats",
    "normalize_name",
    "parse_mapping",
]
