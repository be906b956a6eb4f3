"""The built-in autoscaler: a pure decision (decision.py), the routers' load (signal.py), and the loop
that ties them to one LLMModel and writes through its scale subresource (loop.py)."""
