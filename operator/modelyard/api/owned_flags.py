"""Server flags the operator sets from LLMModel fields, refused in `spec.server.extraArgs`.

Appended verbatim, `--port 9000` would move the server off the port the probes, the Service and the
router use, and `--tensor-parallel-size 2` with `gpus: 4` would pass both flags. Each engine spells a
setting its own way (builders/engines), so every spelling is listed, with the field that sets it.
"""

from __future__ import annotations

LISTEN = "no field: the server listens on 0.0.0.0:8000, where the probes, the Service and the router reach it"

# field (as written in the LLMModel) -> the flags it sets, in any engine's spelling
OWNED_FLAGS: dict[str, tuple[str, ...]] = {
    LISTEN: ("--host", "--port"),
    "spec.url": ("--model", "--model-path"),
    "spec.revision": ("--revision",),
    "spec.servedName and spec.aliases": ("--served-model-name", "--alias"),
    "spec.task": ("--task", "--runner", "--convert", "--is-embedding"),
    "spec.server.dtype": ("--dtype",),
    "spec.resources.gpus": ("--device", "--tensor-parallel-size", "--tp-size", "--tp", "-tp"),
    "spec.server.maxModelLen": ("--max-model-len", "--context-length"),
    "spec.server.maxNumSeqs": ("--max-num-seqs", "--max-running-requests"),
    "spec.server.prefixCaching": (
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--disable-radix-cache",
    ),
}
FLAG_FIELD = {flag: field for field, flags in OWNED_FLAGS.items() for flag in flags}

# Bounds so the API server can estimate the CEL rule's cost.
MAX_EXTRA_ARGS = 128
MAX_EXTRA_ARG_LENGTH = 4096


def owned_flag(arg: str) -> str | None:
    """The owned flag `arg` sets (`--port` for `--port` and `--port=9000`), if any."""
    flag = arg.split("=", 1)[0]
    return flag if flag in FLAG_FIELD else None


def refusal(arg: str) -> str:
    flag = owned_flag(arg) or arg
    field = FLAG_FIELD[flag]
    if field == LISTEN:
        return f"spec.server.extraArgs: {flag} is set by the operator ({LISTEN})"
    return f"spec.server.extraArgs: {flag} is set by the operator from {field}; set that field instead"


def _cel_list() -> str:
    return "[" + ", ".join(f"'{f}'" for f in FLAG_FIELD) + "]"


CEL_RULE = f"self.all(a, !(a in {_cel_list()}) && !{_cel_list()}.exists(f, a.startsWith(f + '=')))"
CEL_MESSAGE = "server.extraArgs must not set a flag the operator sets from a field: " + "; ".join(
    f"{'/'.join(flags)} ({field})" for field, flags in OWNED_FLAGS.items()
)
