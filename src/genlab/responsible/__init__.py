"""Responsible AI: audits of a run's data and outputs by group (`audit.py`); filters live in serving/guard.py."""
