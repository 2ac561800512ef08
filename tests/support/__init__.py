"""Test support shared by several suites (importable as ``support``: tests/conftest.py puts tests/ on the path)."""
