"""Simulation harness: a calibrated shopper-behaviour generator and labelled anomaly injection."""
