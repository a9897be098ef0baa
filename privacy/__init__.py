"""Differential privacy: certificates checked with Opacus, DP training, audits, DP statistics."""
