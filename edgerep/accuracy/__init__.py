"""Accuracy of checkpoints and artifacts on labelled photos (``evaluate``) and the CI gate over it (``gate``)."""
