"""Central Flower ServerApp and CLI (thin adapter over seqanom_core).

Not built yet: the federation issue adds the ServerApp (strategies, checkpoints, resume).
"""
