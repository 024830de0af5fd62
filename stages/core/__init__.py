"""The kernel every stage shares: params, paths, data contracts, errors, the CLI, offline setup.

No torch, ultralytics, albumentations or great-expectations here: importing core is cheap.
"""
