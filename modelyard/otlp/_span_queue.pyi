# The compiled queue (_span_queue.c) behaves as span_queue.py's does.
from modelyard.otlp.span_queue import SpanQueue as _Queue

class SpanQueue(_Queue): ...
