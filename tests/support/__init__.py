"""Helpers shared by the tests and the bench scripts.

Ports and HTTP probes (net), waits (waits), Prometheus samples (metrics), ServiceAccounts
(service_accounts), tool schemas (tool_schemas), the source roots for PYTHONPATH (roots).

Each module has one job and imports nothing from the product except what its job needs.
"""
