"""Thin APIRouters, one module per endpoint; they validate, delegate to ``serving`` and shape nothing."""
