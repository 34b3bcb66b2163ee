"""Scoring captions: the evaluate stage's work, the metrics and the figures."""
