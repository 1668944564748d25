"""Alerting: alert definitions as the evaluator reads them (definitions.py)."""
