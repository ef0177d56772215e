"""Model modules for tests/test_models.py that must live in their own module.

``future_models`` uses ``from __future__ import annotations`` (every annotation
is a string resolved later); ``plain_models`` declares the same classes without
it, so the tests can check that both spellings store and read identically.
"""
