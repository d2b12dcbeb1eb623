"""Live scoring: each shopper's events scored as they arrive, with batch scoring's answers.

``events`` checks incoming events, ``state`` is what is kept per shopper, ``engine.LiveScorer``
scores, ``service.create_app`` serves it over HTTP (``seqanom serve``) and ``page`` is its live
page. ``seqanom stream`` runs the same engine over NDJSON on stdin/stdout.
"""
