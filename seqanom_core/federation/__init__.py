"""The federation's plain logic, below the Flower adapters (``client/``, ``server/``) and above the
detector library: run settings, message keys, the global model built from arrays, what a site
does in a round, calibration histograms and their pooling on the server, the round record and
model metadata, the privacy statement, record contents. No Flower import here; the rest of
``seqanom_core`` never imports this package (tests/test_architecture.py).
"""
