"""What runs the model: loading weights and placing layers on devices, the runner that turns a scheduled
step into forward passes, the paged KV pool and the CPU decode working copy,
the bucketed static-shape decode step (compiled, or captured as CUDA graphs), the output projection,
sampling and guided (grammar-constrained) decoding, and the embedding path.

This is where torch does its work; the step loop in ``engine.py`` hands it what ``core/`` decided.
The lean Llama-family forward (``fast_llama.py``) and LoRA (``lora/``) still sit beside ``engine.py``.
"""
