"""Transitional: the LPIPS wrapper is :class:`rsd_deploy.metrics.LPIPS`. export/bench_measure.py
still imports it from here under its old name; delete this file once it imports rsd_deploy.metrics."""

from rsd_deploy.metrics import LPIPS as LPIPSLoss  # noqa: F401
