"""Semantic segmentation (``data.task: segment``): the smp segmenter's training and inference."""
