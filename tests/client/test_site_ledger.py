"""A site's ledger in the ClientApp: its own site's only, locked while a handler uses it, and
written before the handler can reply."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client.site_resources import site_ledger
from seqanom_core.errors import ConfigError
from seqanom_core.federation.run_config import settings_from_run_config
from seqanom_core.federation.site_round import SitePaths
from seqanom_core.ledger_integrity import LedgerInUse, ledger_lock
from seqanom_core.privacy_ledger import PrivacyLedger


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_the_site_ledger_is_locked_written_before_the_reply_and_the_sites_own(tmp_path):
    settings = settings_from_run_config({"dp": True, "epsilon": 3.0})
    path = tmp_path / "ledger.json"
    paths = SitePaths("site-a", tmp_path / "train.parquet", ledger=path)
    with site_ledger(_context(), paths, settings) as ledger:
        with pytest.raises(LedgerInUse):  # held for the whole handler
            with ledger_lock(path):
                pass
        ledger.fix_delta(1e-5)
        ledger.record_gaussian(50.0, 1, "training-count", run="r")
    saved = PrivacyLedger.load(path)  # on disk when the block (the handler's work) ends
    assert saved.site == "site-a" and saved.budget == 3.0 and len(saved.entries) == 1
    other = SitePaths("site-b", tmp_path / "train.parquet", ledger=path)
    with pytest.raises(ConfigError, match="site 'site-a', not of this site 'site-b'"):
        with site_ledger(_context(), other, settings):
            pass
    higher = settings_from_run_config({"dp": True, "epsilon": 5.0})
    with pytest.raises(ConfigError, match="--raise-budget 5"):
        with site_ledger(_context(), paths, higher):
            pass
