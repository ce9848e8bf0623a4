"""Tests of the command line and the run modes end to end (scoresde.main, scoresde.modes).

A package (as every tests/ subdirectory is) so that test module names may repeat across subdirectories
(tests/sampling/test_consistency.py beside tests/fewstep/test_consistency.py) under pytest's default import mode.
"""
