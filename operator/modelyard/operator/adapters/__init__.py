"""LoRA adapters on running pods: the load/unload loop (loop.py), its pure decisions (plan.py) and the
HTTP calls it makes (client.py)."""
