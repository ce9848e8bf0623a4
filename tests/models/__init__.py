"""Tests of scoresde.models.

A package (as every tests/ subdirectory is) so that test module names may repeat across subdirectories
(tests/sampling/test_consistency.py beside tests/fewstep/test_consistency.py) under pytest's default import mode.
"""
