"""Generic mapping mini-language (``parse_mapping``), for sites whose logs use their own columns::

    user_id=visitorid,item_id=itemid,category_id=-,behavior=event,timestamp=timestamp,
    behaviors=view:view;addtocart:cart;transaction:buy,time=unix_ms,delimiter=;

* Pairs ``key=value`` separated by ``,``; spaces around keys and values are ignored.
* Required: ``user_id``, ``item_id``, ``category_id``, ``behavior`` and ``timestamp``, each the
  name of a source column (matched to headers case-insensitively, ignoring ``_``, ``-``,
  spaces). ``category_id=-`` means "use the item id"; ``behavior=-`` means the file has no
  behaviour column and every event is ``constant_behavior`` (default ``view``).
* Optional: ``site=COLUMN``; ``behaviors=SRC:NAME;SRC:NAME`` (source value -> one of
  ``view, cart, fav, buy``; default: the canonical names and their integer codes 0-3);
  ``drop=VALUE;VALUE`` (behaviour values that are known but not modelled: quarantined under
  their own reason; a dropped value leaves the default ``behaviors``, and may not be listed
  in explicit ones); ``time=unix_s|unix_ms|datetime|date|month_day`` (default ``unix_s``;
  ``datetime`` is ISO 8601 or ``YYYY-MM-DD HH:MM:SS[.fff][Z| UTC|+HH:MM]``, naive = UTC);
  ``year=YYYY`` (for ``month_day``); ``time_offset_ms=COLUMN`` (milliseconds added to the
  timestamp); ``delimiter=CHAR`` (or ``comma``, ``semicolon``, ``tab``, ``pipe``, ``space``);
  ``columns=A;B;C`` (positional column order, for files without a header; without it a
  header is required); ``constant_behavior=NAME``; ``encoding=NAME``; ``name=LABEL``.
* Unknown keys, repeated keys, bad values (e.g. an unknown ``encoding``) and conflicts raise
  :class:`~seqanom_core.errors.ConfigError`. Conflicts: two fields naming the same column
  (except ``category_id`` = the ``item_id`` column, which means the same as ``category_id=-``),
  a source value given two targets in ``behaviors``, a ``drop`` value also in ``behaviors``.
"""

from __future__ import annotations

import logging
import re

from seqanom_core.errors import ConfigError
from seqanom_core.formats.spec import (
    _CANONICAL_VALUES,
    MAPPED_FIELDS,
    TIME_KINDS,
    FormatSpec,
    _is_text_encoding,
)
from seqanom_core.schema import BEHAVIOR_CODE, BEHAVIORS

logger = logging.getLogger("seqanom_core.formats")  # one logger name for the whole package

_MAPPING_KEYS: tuple[str, ...] = (
    *MAPPED_FIELDS,
    "behaviors",
    "drop",
    "time",
    "year",
    "time_offset_ms",
    "delimiter",
    "columns",
    "constant_behavior",
    "encoding",
    "name",
)
_KEY_ALIASES = {"behaviour": "behavior", "behaviours": "behaviors", "category": "category_id"}
_DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|", "space": " "}
_TIME_ALIASES = {"s": "unix_s", "unix": "unix_s", "seconds": "unix_s", "ms": "unix_ms", "iso": "datetime"}


def parse_mapping(spec: str) -> FormatSpec:
    """Parse a generic column mapping (see the module docstring) into a FormatSpec."""
    values: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        key = _KEY_ALIASES.get(key, key)
        if not (key == "delimiter" and value and not value.strip()):
            value = value.strip()  # a delimiter may be a lone space or tab
        if not sep:
            raise ConfigError(f"mapping: '{part.strip()}' is not key=value")
        if key not in _MAPPING_KEYS:
            raise ConfigError(
                f"mapping: unknown key '{key}'; known keys: {', '.join(_MAPPING_KEYS)}"
            )
        if key in values:
            raise ConfigError(f"mapping: key '{key}' given twice")
        if value == "":
            raise ConfigError(f"mapping: key '{key}' has an empty value")
        values[key] = value
    missing = [k for k in ("user_id", "item_id", "category_id", "behavior", "timestamp") if k not in values]
    if missing:
        raise ConfigError(
            f"mapping: missing key(s) {', '.join(missing)} "
            "(use category_id=- for 'use the item id', behavior=- for 'all views')"
        )
    for key in ("user_id", "item_id", "timestamp"):
        if values[key] == "-":
            raise ConfigError(f"mapping: '{key}' must name a column, not '-'")

    def column(key: str) -> str | None:
        """Return the column of an optional field ('-' or absent: None)."""
        v = values.get(key)
        return None if v in (None, "-") else v

    kwargs: dict = {}
    if "behaviors" in values:
        pairs = []
        for item in values["behaviors"].split(";"):
            if not item.strip():
                continue
            src, sep, canonical = item.rpartition(":")
            if not sep or not src.strip():
                raise ConfigError(f"mapping: behaviors item '{item}' is not SOURCE:NAME")
            if canonical.strip() not in BEHAVIOR_CODE:
                raise ConfigError(
                    f"mapping: behaviors item '{item}': '{canonical.strip()}' is not one of "
                    f"{', '.join(BEHAVIORS)}"
                )
            pairs.append((src.strip(), canonical.strip()))
        kwargs["behaviors"] = tuple(pairs)
    if "drop" in values:
        dropped = tuple(v.strip() for v in values["drop"].split(";") if v.strip())
        kwargs["dropped_behaviors"] = dropped
        if "behaviors" not in values:  # dropping a default value takes it out of the defaults
            gone = {v.lower() for v in dropped}
            kwargs["behaviors"] = tuple(pair for pair in _CANONICAL_VALUES if pair[0] not in gone)
    if "time" in values:
        kind, _, year = values["time"].partition(":")
        kind = _TIME_ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if kind not in TIME_KINDS:
            raise ConfigError(
                f"mapping: time '{values['time']}' is not one of {', '.join(TIME_KINDS)}"
            )
        kwargs["time_kind"] = kind
        if year:
            values.setdefault("year", year)
    if "year" in values:
        if not re.fullmatch(r"\d{4}", values["year"].strip()):
            raise ConfigError(f"mapping: year '{values['year']}' is not a 4-digit year")
        kwargs["year"] = int(values["year"])
    if "delimiter" in values:
        raw = values["delimiter"]
        kwargs["delimiter"] = _DELIMITER_NAMES.get(raw.strip().lower(), raw if len(raw) == 1 else raw.strip())
    if "columns" in values:
        kwargs["columns"] = tuple(c.strip() for c in values["columns"].split(";") if c.strip())
    if "constant_behavior" in values:
        kwargs["constant_behavior"] = values["constant_behavior"]
    if "encoding" in values:
        if not _is_text_encoding(values["encoding"]):
            raise ConfigError(f"mapping: encoding '{values['encoding']}' is not a known text encoding")
        kwargs["encodings"] = (values["encoding"],)
    try:
        result = FormatSpec(
            name=values.get("name", "custom"),
            user_id=values["user_id"],
            item_id=values["item_id"],
            category_id=column("category_id"),
            behavior=column("behavior"),
            timestamp=values["timestamp"],
            site=column("site"),
            time_offset_ms=column("time_offset_ms"),
            description=f"generic mapping: {spec}",
            **kwargs,
        )
    except ConfigError as err:
        raise ConfigError(f"mapping: {err}") from None
    logger.debug("parsed mapping %r into %s", spec, result)
    return result
