"""One model on 1 GPU vs N GPUs, and the same workload on vLLM, in one run (issue 12).

Each run starts a server with exactly the command line the operator builds for an LLMModel with
`resources.gpus` = 1 or N (builders/engines/): the built-in `modelyard-server` (layers split over N
GPUs, `--tensor-parallel-size N`) and, with `--vllm BIN`, `vllm serve` (tensor parallel over N GPUs).
Each is driven with the same streamed completions (``--streams`` concurrent, greedy, EOS ignored) after
one identical warm-up round; runs never overlap. Reported: output tok/s and TTFT per run, and the ratios.
Not a test: run it by hand where GPUs are, e.g.

    python bench/multi_gpu.py --gpus 4 --dtype bfloat16 --vllm ~/.cache/modelyard/vllm-gpu/bin/vllm \
        --model-dir /models/llama-70b --out bench/results/multi_gpu.json

On CPU (`--device cpu`) the N-way split only repeats the one CPU: it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "router"), str(REPO / "server"), str(REPO / "bench")]

from modelyard.api.llmmodel import LLMModel  # noqa: E402
from modelyard.operator.builders.deployment import build_deployment  # noqa: E402
from modelyard.operator.settings import OperatorSettings  # noqa: E402
from net import free_port  # noqa: E402
from server_throughput import (  # noqa: E402
    RunResult,
    _line,
    build_model_dir,
    make_prompts,
    run_server,
)

SERVED = "bench-model"


def operator_argv(engine: str, gpus: int, dtype: str, binary: str, model_dir: Path, port: int) -> list[str]:
    """The operator's command line for this engine and GPU count, with the pod's paths made local."""
    spec = {
        "engine": engine,
        "url": "pvc://weights/model",
        "servedName": SERVED,
        "resources": {"gpus": gpus},
        "server": {"dtype": dtype, "image": "bench"},
    }
    body = {"metadata": {"name": "bench", "namespace": "bench", "uid": "u"}, "spec": spec}
    (c,) = build_deployment(LLMModel.from_body(body), OperatorSettings())["spec"]["template"]["spec"][
        "containers"
    ]
    swaps = {"/models/weights/model": str(model_dir), "0.0.0.0": "127.0.0.1", "8000": str(port)}
    # The image's executable (`modelyard-server`, `vllm`) becomes the local one; its subcommand stays.
    return [binary, *c["command"][1:], *(swaps.get(a, a) for a in c["args"])]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="modelyard-multi-gpu-"))
    model_dir: Path = args.model_dir or work / "smollm-135m-random"
    if args.model_dir is None:
        build_model_dir(model_dir)
    texts, _ = make_prompts(model_dir, args.streams, args.prompt_tokens)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("operator", "router", "server", "."))
    if args.device == "cpu":
        env["MODELYARD_SERVER_DEVICE"] = "cpu"
    server_bin = str(Path(sys.executable).parent / "modelyard-server")
    runs: list[tuple[str, str, int, str, str]] = [
        (f"modelyard-{n}gpu", "modelyard", n, server_bin, "/ready") for n in sorted({1, args.gpus})
    ]
    if args.vllm:
        runs += [(f"vllm-{n}gpu", "vllm", n, args.vllm, "/health") for n in sorted({1, args.gpus})]
    results: dict[str, RunResult] = {}
    for name, engine, gpus, binary, ready in runs:
        port = free_port()
        argv = operator_argv(engine, gpus, args.dtype, binary, model_dir, port)
        if engine == "modelyard" and gpus == 1 and args.gpus > 1:
            argv += ["--tensor-parallel-size", "1"]  # else the server's default takes every GPU
        results[name] = await run_server(
            name, argv, ready, port, SERVED, texts, args.new_tokens, {"ignore_eos": True},
            f"{engine} on {gpus} GPU(s), the operator's command line", env, work,
        )  # fmt: skip
        print(_line(results[name]), flush=True)
    report: dict[str, Any] = {
        "workload": vars(args) | {"model_dir": str(model_dir)},
        "machine": platform.node(),
        "note": "one run, runs one after the other; machine possibly shared (see the caller)",
        "results": {k: v.summary() for k, v in results.items()},
    }
    base = results.get("modelyard-1gpu")
    if base and base.tok_s:
        report["ratio_to_modelyard_1gpu"] = {k: round(v.tok_s / base.tok_s, 2) for k, v in results.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="model (default: build the SmolLM-shaped one)")
    parser.add_argument("--gpus", type=int, default=2, help="N for the multi-GPU runs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--vllm", help="a `vllm` executable to run the same workload on")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
