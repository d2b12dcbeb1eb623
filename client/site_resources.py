"""What every handler of a site needs: its files, the run's settings, its ledger, a training round.

Node config (deployment, ``flower-supernode --node-config``): ``data-path`` (the site's events),
``format`` (default ``seqanom``, the project's own format), ``ledger-path`` (privacy ledger file),
``device`` ("auto", "cpu", "cuda"), ``site-name``, optionally ``test-path``/``labels-path``
(labelled shoppers for AUROC), ``new-ledger`` (true: a missing ledger where the site kept one
starts anew), and the site's privacy policy (``privacy-budget``, which caps the run's
``epsilon``: a new ledger takes the capped budget, an existing one refuses a higher one, see
``seqanom ledger --raise-budget``; ``require-dp``, ``max-delta``, ``max-rounds``,
``allow-dp-seed``: ``seqanom_core/federation/site_policy.py``). In simulation the site is
``partition-id``: its files are under the run config's ``data-dir``/site-<id>/ and its ledger is
``ledger-dir``/site-<id>.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from seqanom_core.federation import message_keys
from seqanom_core.federation.run_config import RunConfig, settings_from_run_config
from seqanom_core.federation.site_policy import POLICY_KEYS, REASONS, SitePolicy
from seqanom_core.federation.site_round import RoundOutcome, SitePaths, load_site, train_round
from seqanom_core.ledger_integrity import ledger_lock
from seqanom_core.privacy_ledger import PrivacyLedger, more_recent

log = logging.getLogger(__name__)

NODE_KEYS = {"data-path", "format", "ledger-path", "device", "site-name", "test-path",
             "labels-path", "partition-id", "num-partitions", "new-ledger", *POLICY_KEYS}
_LEDGER_STATE = "privacy-ledger"
LOCK_WAIT_S = 60.0  # how long a handler waits for another process holding the site's ledger


def site_setup(context: Context) -> tuple[SitePaths, RunConfig, int]:
    """The site's files, the run's typed settings (the budget capped by the site's, the node's
    device) and the code of the site policy's refusal of the run (0: accepted)."""
    node = dict(context.node_config)
    unknown = sorted(set(node) - NODE_KEYS)
    if unknown:
        raise ValueError(f"unknown node config keys {unknown}; known: {sorted(NODE_KEYS)}")
    settings = settings_from_run_config(dict(context.run_config))
    fed = settings.federation
    if "data-path" in node:
        name = str(node.get("site-name", Path(str(node["data-path"])).stem))
        opt = {k: Path(str(node[k])) for k in ("test-path", "labels-path", "ledger-path") if k in node}
        paths = SitePaths(name, Path(str(node["data-path"])), str(node.get("format", "seqanom")),
                          opt.get("test-path"), opt.get("labels-path"), opt.get("ledger-path"))
    elif "partition-id" in node and fed.data_dir:
        name = f"site-{int(node['partition-id'])}"
        root = Path(fed.data_dir) / name
        ledger = Path(fed.ledger_dir) / f"{name}.json" if fed.ledger_dir else None
        paths = SitePaths(name, root / "train.parquet", "seqanom", root / "test.parquet",
                          root / "labels.csv", ledger)
    else:
        raise ValueError("node config needs data-path (deployment), or partition-id with the "
                         "run config's data-dir (simulation)")
    if str(node.get("new-ledger", "false")).lower() in ("true", "1"):
        paths = dataclasses.replace(paths, new_ledger=True)
    policy = SitePolicy.from_node_config(node)
    refusal = policy.refusal(settings)
    if refusal:
        log.warning("site %s declines the run: %s (its policy: %s)", paths.name, REASONS[refusal],
                    policy)
    if settings.train.dp is not None:
        capped = policy.capped_budget(settings)
        if capped != settings.budget:
            log.warning("site %s caps the run's epsilon budget %s at its own %s", paths.name,
                        settings.budget, capped)
        settings = dataclasses.replace(settings, budget=capped)
    if "device" in node:
        settings = dataclasses.replace(
            settings, train=dataclasses.replace(settings.train, device=str(node["device"])))
    return paths, settings, refusal


def policy_declined(refusal: int) -> dict[str, float]:
    """The metrics of a reply the site's policy declines: nothing accounted is sent."""
    return {"declined": 1.0, "declined-policy": float(refusal), "num-examples": 0.0}


@contextmanager
def site_ledger(context: Context, paths: SitePaths, settings: RunConfig
                ) -> Iterator[PrivacyLedger | None]:
    """The site's ledger under DP (None without DP), kept with the run's accountant, locked for
    the block, and written (file and run state) when the block ends, before the handler replies:
    a release's spend is on disk before the release leaves (kept on an error too)."""
    dp = settings.train.dp
    if dp is None:
        yield None
        return
    with ledger_lock(paths.ledger, LOCK_WAIT_S) if paths.ledger is not None else nullcontext():
        ledger = _restore_ledger(context, paths, settings.budget, dp.accountant)
        try:
            yield ledger
        finally:
            _keep_ledger(context, paths, ledger)


def keep_locally(paths: SitePaths, handler: str, server_round: int,
                 values: Mapping[str, float]) -> None:
    """What the site measured but does not send: its log, and ``paths.local_log`` (JSON lines)."""
    log.info("site %s round %d %s (kept at the site): %s", paths.name, server_round, handler,
             {k: round(float(v), 4) for k, v in values.items()})
    if paths.local_log is not None and values:
        paths.local_log.parent.mkdir(parents=True, exist_ok=True)
        with paths.local_log.open("a") as f:
            f.write(json.dumps({"round": server_round, "handler": handler,
                                **{k: float(v) for k, v in values.items()}}) + "\n")


def _restore_ledger(context: Context, paths: SitePaths, budget: float | None,
                    accountant: str) -> PrivacyLedger:
    """The site's ledger: the longer of the run's state copy and the file (never forget spend),
    kept with the run's ``accountant``; another site's ledger, one written with another
    accountant, and a budget above the ledger's are refused (``PrivacyLedger.open``)."""
    in_state = None
    if _LEDGER_STATE in context.state:
        in_state = PrivacyLedger.from_json(str(context.state[_LEDGER_STATE]["json"]))
        where = f"site {paths.name}'s ledger in the run state"
        in_state.state.require(accountant, where)
        in_state.use_budget(budget, where)
    on_disk = PrivacyLedger.open(paths.ledger, budget=budget, site=paths.name,
                                 accountant=accountant, new_ledger=paths.new_ledger)
    return more_recent(in_state, on_disk) or on_disk


def _keep_ledger(context: Context, paths: SitePaths, ledger: PrivacyLedger) -> None:
    context.state[_LEDGER_STATE] = ConfigRecord({"json": ledger.to_json()})
    if paths.ledger is not None:
        ledger.save(paths.ledger)


def train_site(context: Context, arrays: dict[str, np.ndarray], cfg: Mapping[str, Any]
               ) -> tuple[SitePaths, RunConfig, RoundOutcome]:
    """One round of local (DP) training from the global ``arrays``, kept in the site's ledger
    (declined, training nothing, when the site's policy refuses the run)."""
    paths, settings, refusal = site_setup(context)
    if refusal:
        return paths, settings, RoundOutcome(None, policy_declined(refusal), None,
                                             REASONS[refusal])
    site = load_site(paths, settings.tokenizer, settings.validation_fraction, settings.train.seed)
    with site_ledger(context, paths, settings) as ledger:
        out = train_round(
            site, settings, arrays, ledger=ledger,
            server_round=int(cfg[message_keys.SERVER_ROUND]), rounds_left=int(cfg.get(message_keys.ROUNDS_LEFT, 1)),
            proximal_mu=float(cfg.get(message_keys.PROXIMAL_MU, 0.0)), run_id=str(cfg.get(message_keys.RUN_ID, "")),
        )
    keep_locally(paths, "train", int(cfg[message_keys.SERVER_ROUND]), out.local)
    return paths, settings, out
