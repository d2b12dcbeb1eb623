"""Merchant-site Flower ClientApp and CLI (thin adapter over seqanom_core).

Not built yet: the federation issue adds the ClientApp (train/evaluate handlers, privacy ledger).
"""
