"""Bridges from gemb serving bundles to the tools the field reports and serves with.

Each module needs its own optional extra (``pip install -e ".[mteb]"`` for
gemb.integrations.mteb); nothing here is imported by gemb itself.
"""
