"""The Modelyard router: one OpenAI-compatible endpoint in front of every model's pods.

It ships in the operator image and must never import torch, ``modelyard.server`` or ``modelyard.operator``;
the only shared code is the contract in :mod:`modelyard.api.metadata`.
"""
