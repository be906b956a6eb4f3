"""The engine process and its wire: ``process.py`` is the client the HTTP process holds (torch-free, an
``Engine`` like ``TorchEngine``), ``process_server.py`` the child it starts (``python -m
modelyard.server.engine.proc.process_server``) that loads the weights and runs ``TorchEngine``, and
``ipc.py`` the pickled messages between them.
"""
