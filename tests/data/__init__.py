"""Tests of scoresde.data.

A package (as every tests/ subdirectory is) so that test module names may repeat across subdirectories
(tests/latent/test_autoencoder.py beside tests/models/test_autoencoder.py) under pytest's default import mode.
"""
