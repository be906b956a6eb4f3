"""Start and stop the test control plane by hand.

python -m tests.cluster build            # build or reuse the binaries, print their directory
python -m tests.cluster up               # start, print `export KUBECONFIG=...`
python -m tests.cluster down [WORK_DIR]  # stop the processes `up` started (by PID), remove WORK_DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.cluster.harness import (
    ControlPlane,
    ControlPlaneError,
    build_binaries,
    find_binaries,
    stop_detached,
)
from tests.cluster.plugin import DEFAULT_CPU_NODES, DEFAULT_GPU_NODES

CURRENT = (
    Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard")) / "k8s" / "current-cluster"
)


def cmd_up(args: argparse.Namespace) -> int:
    if CURRENT.exists() and (Path(CURRENT.read_text().strip()) / "state.json").exists():
        print(f"a cluster is already up in {CURRENT.read_text().strip()}; run `down` first", file=sys.stderr)
        return 1
    work_dir = Path(args.work_dir) if args.work_dir else None
    plane = ControlPlane(find_binaries(), work_dir, detached=True, high_qps=args.high_qps)
    try:
        plane.start()
    except ControlPlaneError as exc:
        print(exc, file=sys.stderr)
        return 1
    client = plane.client
    client.add_gpu_nodes(
        args.gpu_nodes, gpus_per_node=args.gpus_per_node, product=args.gpu_product, wait=False
    )
    client.add_cpu_nodes(args.cpu_nodes, wait=False)
    client.wait_nodes_ready([n["metadata"]["name"] for n in client.request("GET", "/api/v1/nodes")["items"]])
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(str(plane.work_dir))
    print(
        f"# control plane up in {plane.startup_seconds:.1f}s; logs in {plane.work_dir}/logs", file=sys.stderr
    )
    print(f"export KUBECONFIG={client.kubeconfig}")
    print(f"export MODELYARD_KUBECONFIG={client.kubeconfig}")
    print(f'export PATH="{client.bin_dir}:$PATH"')
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if args.work_dir:
        work_dir = Path(args.work_dir)
    elif CURRENT.exists():
        work_dir = Path(CURRENT.read_text().strip())
    else:
        print("no cluster recorded as up", file=sys.stderr)
        return 1
    if not (work_dir / "state.json").exists():
        print(f"{work_dir} holds no state.json; nothing to stop", file=sys.stderr)
        CURRENT.unlink(missing_ok=True)
        return 1
    survivors = stop_detached(work_dir)
    if survivors:
        print(f"still alive: {survivors}", file=sys.stderr)
        return 1
    if CURRENT.exists() and CURRENT.read_text().strip() == str(work_dir):
        CURRENT.unlink()
    print(f"stopped; removed {work_dir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or reuse the binaries")
    up = sub.add_parser("up", help="start a control plane that outlives this command")
    up.add_argument("--gpu-nodes", type=int, default=DEFAULT_GPU_NODES)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--gpu-product", default="NVIDIA-H100-80GB-HBM3")
    up.add_argument("--cpu-nodes", type=int, default=DEFAULT_CPU_NODES)
    up.add_argument("--work-dir", help="default: a fresh /tmp/modelyard-k8s-* directory")
    up.add_argument("--high-qps", action="store_true", help="lift client/server rate limits (scale tests)")
    down = sub.add_parser("down", help="stop the control plane started by `up`")
    down.add_argument("work_dir", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_binaries())
        return 0
    return cmd_up(args) if args.command == "up" else cmd_down(args)


if __name__ == "__main__":
    sys.exit(main())
