"""Evaluation: the one metric protocol (``metrics``), classical baselines and reports.

Import from the submodules (``from ctslice.evaluation.metrics import evaluate``); this package stays
empty so that importing it pulls in nothing heavy.
"""
