"""Metrics, classical baselines and the HTML report."""
