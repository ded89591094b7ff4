"""syncline connectors: sync files, the delivery engine, the ledger, vendor clients and the sandbox.

Nothing in this package imports Dagster: the same code runs from the ``syncline`` CLI and from Dagster assets.
"""
