"""The sites' replies as the round loop reads them: who sent one, its metrics, and which training
replies may be aggregated (the rest are logged in the round's record, never aggregated)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from flwr.app import Message

from seqanom_core.federation import message_keys
from seqanom_core.federation.global_model import update_problems
from seqanom_core.federation.records import as_arrays
from seqanom_core.federation.round_record import RoundRecord, SiteGuarantees
from seqanom_core.federation.site_policy import refusal_text
from server import central_dp

log = logging.getLogger(__name__)


_SITE_ERROR = re.compile(r"(\w+) failed at the site with (\w+)")
_ERROR_TYPE = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Exit|Interrupt))\b")


def site_error_text(reason: str) -> str:
    """The short, path-free text of a site's error reply, as a deployed site sends it.

    A deployed ClientApp replies with the handler and the error type only (``client.app``);
    Flower's simulation engine passes the whole traceback instead (file paths, the chained
    error's message, which may quote a shopper or a path). Only the handler and the error type
    are kept, whichever runtime sent it."""
    found = _SITE_ERROR.search(reason)
    if found:
        return (f"{found.group(1)} failed at the site with {found.group(2)}; the details are in "
                "the site's log")
    types = [t for t in _ERROR_TYPE.findall(reason) if t != "SiteError"]
    kind = types[-1] if types else "an error"
    return f"the site failed with {kind}; the details are in the site's log"


def site_name(msg: Message) -> str:
    """The name a site sent, else ``node-<id>``."""
    if message_keys.SITE in msg.content:
        return str(msg.content[message_keys.SITE]["name"])
    return f"node-{msg.metadata.src_node_id}"


def site_metrics(msg: Message) -> dict[str, float]:
    """The site's scalar metrics (without the aggregation weight the server itself sets)."""
    if message_keys.METRICS not in msg.content:
        return {}
    return {k: float(v) for k, v in msg.content[message_keys.METRICS].items()  # type: ignore[arg-type]
            if k != central_dp.SITE_WEIGHT}


def usable_training_replies(replies: Iterable[Message], rec: RoundRecord,
                            shapes: dict[str, tuple[int, ...]],
                            guarantees: SiteGuarantees) -> list[Message]:
    """Training replies that may be aggregated; errors, declines and unusable updates are logged in
    ``rec``, and every site's reported epsilon is kept in ``guarantees``."""
    usable = []
    for msg in replies:
        if msg.has_error():
            text = site_error_text(msg.error.reason)
            rec.rejected.append({"site": f"node-{msg.metadata.src_node_id}",
                                 "reason": f"error: {text}"})
            log.warning("round %d: node %d failed: %s", rec.round, msg.metadata.src_node_id,
                        text)
            continue
        name, metrics = site_name(msg), site_metrics(msg)
        rec.note_site(name, metrics)
        guarantees.note(name, metrics)
        if metrics.get("declined", 0.0):
            if metrics.get("declined-policy", 0.0):
                log.warning("round %d: %s declined the run by its own privacy policy: %s",
                            rec.round, name, refusal_text(metrics["declined-policy"]))
            else:
                log.info("round %d: %s declined (privacy budget)", rec.round, name)
            continue
        arrays = (as_arrays(msg.content[message_keys.ARRAYS])
                  if message_keys.ARRAYS in msg.content else None)
        problems = update_problems(shapes, arrays, metrics)
        if problems:
            reason = "; ".join(problems)
            rec.rejected.append({"site": name, "reason": reason})
            rec.sites[name]["rejected"] = reason
            log.warning("round %d: update from %s rejected: %s", rec.round, name, reason)
            continue
        usable.append(msg)
    return usable
