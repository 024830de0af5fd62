"""Backbones and their weights, the feature cache, checkpoints and run fingerprints."""
