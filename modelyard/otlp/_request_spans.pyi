# The compiled recorder (_request_spans.c) behaves as request_spans.py's classes and functions do.
from modelyard.otlp.encode import Encoder
from modelyard.otlp.request_spans import RequestRecorder as _Recorder
from modelyard.otlp.request_spans import RequestSpans as _Spans
from modelyard.otlp.span_queue import Pending

class RequestSpans(_Spans): ...
class RequestRecorder(_Recorder): ...

def encode_fields(items: list[bytes | Pending], encoder: Encoder) -> list[bytes]: ...
