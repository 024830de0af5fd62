"""Metrics as pure functions of labels and predictions, with bootstrap intervals."""
