"""The central team's side: the Flower ServerApp (a thin adapter over seqanom_core: strategies,
guarded round loop, checkpoints, resume, federated threshold) and its deployment commands."""
