"""A site tokenises its files once, not once per message (seqanom_core.federation.site_cache)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from seqanom_core.config import TokenizerConfig
from seqanom_core.federation import site_round
from seqanom_core.federation.site_cache import cache_dir
from seqanom_core.federation.site_round import SitePaths, load_site


def _paths(site_dirs, tmp_path) -> SitePaths:
    root = site_dirs / "site-0"
    return SitePaths("site-0", root / "train.parquet", "seqanom", root / "test.parquet",
                     root / "labels.csv", tmp_path / "ledgers" / "site-0.json")


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for c in a.channels:
        np.testing.assert_array_equal(a.channels[c], b.channels[c])
    assert a.source == b.source


def test_a_new_process_reads_the_tokenised_site_from_disk(site_dirs, tmp_path, monkeypatch):
    paths = _paths(site_dirs, tmp_path)
    site_round._CACHE.clear()
    first = load_site(paths, TokenizerConfig(), 0.2, 0)
    files = list(cache_dir(paths.ledger).glob("*.npz"))
    assert len(files) == 1
    site_round._CACHE.clear()  # as a fresh ClientApp process

    def no_tokenising(*_a, **_k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(site_round, "build_sequences", no_tokenising)
    again = load_site(paths, TokenizerConfig(), 0.2, 0)
    for name in ("train", "valid", "test"):
        _same(getattr(first, name), getattr(again, name))
    np.testing.assert_array_equal(first.test_labels, again.test_labels)
    # other settings are another cache entry: they tokenise
    site_round._CACHE.clear()
    with pytest.raises(AssertionError, match="tokenised again"):
        load_site(paths, TokenizerConfig(item_states="funnel"), 0.2, 0)
    monkeypatch.undo()
    # a changed data file is tokenised again, and the older entry removed
    site_round._CACHE.clear()
    st = paths.data.stat()
    os.utime(paths.data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        load_site(paths, TokenizerConfig(), 0.2, 0)
        newer = list(cache_dir(paths.ledger).glob("*.npz"))
        assert len(newer) == 1 and newer != files
    finally:
        os.utime(paths.data, ns=(st.st_atime_ns, st.st_mtime_ns))
        site_round._CACHE.clear()


def test_an_unreadable_cache_file_is_rebuilt(site_dirs, tmp_path):
    paths = _paths(site_dirs, tmp_path)
    site_round._CACHE.clear()
    first = load_site(paths, TokenizerConfig(), 0.2, 0)
    (file,) = cache_dir(paths.ledger).glob("*.npz")
    file.write_bytes(b"not a zip file")
    site_round._CACHE.clear()
    again = load_site(paths, TokenizerConfig(), 0.2, 0)
    _same(first.train, again.train)
    with np.load(file, allow_pickle=False) as data:  # rewritten whole
        assert "train.ids" in data
    site_round._CACHE.clear()
