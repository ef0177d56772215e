"""Collects the ```python blocks of README.md and docs/ so the test suite can run them."""
