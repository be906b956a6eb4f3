"""Fake nodes carry what schedulers and node-affinity rules written for real GPU pools look at."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cluster.client import ClusterClient, node_manifest
from tests.cluster.harness import write_kubeconfig
from tests.cluster.sockets import _decode


def test_a_gpu_node_manifest_declares_capacity_labels_and_the_kwok_annotation() -> None:
    node = node_manifest(
        "gpu-0",
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        {"cpu": "192", "memory": "2048Gi", "pods": "110", "nvidia.com/gpu": "8"},
        index=3,
    )
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-0"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["status"]["capacity"] == node["status"]["allocatable"]
    assert {"type": "InternalIP", "address": "10.200.0.4"} in node["status"]["addresses"]


def test_a_client_reads_back_the_kubeconfig_the_harness_writes(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "https://127.0.0.1:6443", ca, "s3cret", "admin")
    (tmp_path / "state.json").write_text(json.dumps({"components": [{"pid": 42}]}))

    client = ClusterClient.from_kubeconfig(kubeconfig, tmp_path)

    assert (client.server, client.token, client.ca_file) == ("https://127.0.0.1:6443", "s3cret", ca)
    assert client.pids == [42]
    assert client.env()["KUBECONFIG"] == str(kubeconfig)


def test_proc_net_addresses_decode_to_ips() -> None:
    assert _decode("0100007F", v6=False) == "127.0.0.1"
    assert _decode("00000000", v6=False) == "0.0.0.0"
    assert _decode("00000000000000000000000001000000", v6=True) == "::1"
