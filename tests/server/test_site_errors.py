"""A site's error reaches the round record as the short, path-free text a deployed site sends,
whichever runtime passed it (the simulation engine passes the whole traceback)."""

from __future__ import annotations

import traceback

from client.app import SiteError, _contained
from server.round_replies import site_error_text


def _traceback_of_a_failing_handler(secret: str) -> str:
    def train(msg, context):  # noqa: ANN001, ANN202
        raise FileNotFoundError(f"/data/sites/{secret}.parquet: no such file")

    try:
        _contained(train)(None, None)
    except SiteError:
        return traceback.format_exc()
    raise AssertionError("the handler did not fail")


def test_a_simulation_traceback_is_reduced_to_the_deployed_text():
    secret = "shopper-u98765"
    full = "ClientAppException occurred. Message: " + _traceback_of_a_failing_handler(secret)
    assert secret in full and "/data/sites" in full  # what the simulation engine would pass
    text = site_error_text(full)
    assert text == ("train failed at the site with FileNotFoundError; the details are in the "
                    "site's log")
    assert secret not in text and "/" not in text
    # a deployed site's reply already is that text: unchanged
    assert site_error_text(text) == text


def test_an_error_without_the_sites_wrapper_keeps_only_its_type():
    reason = ('Traceback (most recent call last):\n  File "/home/site/app.py", line 3\n'
              "ValueError: user u123 at /home/site/data.csv")
    assert site_error_text(reason) == ("the site failed with ValueError; the details are in the "
                                       "site's log")
    assert site_error_text("killed") == "the site failed with an error; the details are in the " \
                                        "site's log"
