"""Test-only plugins: behaviour the tests add to the product code from outside it (fault injection).

The product has no test hooks; these modules patch it where it runs: in the test process (``monkeypatch``), in Ray
workers (code the test hands to Ray), or in a job run as a subprocess (``site/sitecustomize.py``).
"""
