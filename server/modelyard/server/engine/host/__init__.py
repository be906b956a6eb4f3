"""Host tuning: how many compute threads the process may use and sets (``threads.py``), the thread count
picked by measured decode speed (``thread_tuner.py``), and the KV pool's size (``memory.py``: a share
of device memory on CUDA, a fixed budget on CPU).

``threads`` is imported by the torch-free engine client too: it loads torch only inside the function
the engine process calls.
"""
