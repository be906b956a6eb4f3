"""The pod runner's pure parts: command lines, the pod network's loopback twins, the composed KWOK stages."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tests.cluster import podnet, stages
from tests.cluster.podrunner import bind_to, expand, mount_dirs, resolve_command, rewrite_paths
from tests.cluster.servicenet import service_map


def test_kubernetes_variable_expansion() -> None:
    env = {"POD_IP": "10.64.0.7", "PORT": "8000"}
    assert expand("$(POD_IP):$(PORT)", env) == "10.64.0.7:8000"
    assert expand("$(UNKNOWN)", env) == "$(UNKNOWN)"
    assert expand("$$(POD_IP)", env) == "$(POD_IP)"


def test_the_server_binds_to_the_pod_address_not_everywhere() -> None:
    argv = ["modelyard-server", "--model", "m", "--host", "0.0.0.0", "--port", "8000"]
    assert bind_to(argv, "127.64.0.7") == [*argv[:3], "--host", "127.64.0.7", "--port", "8000"]
    assert bind_to(["x", "--host=0.0.0.0"], "127.1.2.3") == ["x", "--host=127.1.2.3"]


def test_image_entrypoints_resolve_to_the_test_venv() -> None:
    [exe, *rest] = resolve_command(["modelyard-router", "--port", "1", "--host", "0.0.0.0"], "127.64.0.7")
    assert Path(exe).name == "modelyard-router"
    assert Path(exe).is_absolute()
    assert rest == ["--port", "1", "--host", "127.64.0.7"]
    assert resolve_command(["sleep", "1"], "127.64.0.7") == ["sleep", "1"]


def test_the_store_images_command_runs_the_installed_server_on_the_pod_address_only() -> None:
    [exe, *rest] = resolve_command(["valkey-server", "--port", "6379"], "127.64.0.7")
    assert Path(exe).name in ("valkey-server", "redis-server")
    assert rest == ["--port", "6379", "--bind", "127.64.0.7"]  # its default is every interface
    assert resolve_command(["redis-server", "--bind", "0.0.0.0"], "127.1.2.3")[1:] == ["--bind", "127.1.2.3"]


def test_empty_dir_mounts_are_directories_of_the_pod_and_the_command_line_follows(tmp_path: Path) -> None:
    container = {"volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/c"}]}
    volumes = [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "x"}}]
    mounts = mount_dirs(container, volumes, tmp_path)
    assert mounts == {"/data": tmp_path / "data"}
    argv = ["valkey-server", "--dir", "/data", "--x", "/data/aof", "/database"]
    assert rewrite_paths(argv, mounts) == [
        "valkey-server", "--dir", str(tmp_path / "data"), "--x", f"{tmp_path}/data/aof", "/database",
    ]  # fmt: skip


def test_the_service_map_names_each_service_and_lists_only_ready_runner_endpoints() -> None:
    svc = {
        "metadata": {"name": "store", "namespace": "ns"},
        "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "redis", "port": 6379}]},
    }
    endpoint_slice = {
        "metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "store"}},
        "ports": [{"name": "redis", "port": 7000}],
        "endpoints": [
            {"addresses": ["10.64.1.2"], "conditions": {"ready": True}},
            {"addresses": ["10.64.1.3"], "conditions": {"ready": False}},
            {"addresses": ["10.64.1.4"], "conditions": {"ready": True, "terminating": True}},
            {"addresses": ["10.244.0.5"], "conditions": {"ready": True}},  # KWOK-only: nothing listens
        ],
    }
    got = service_map([svc], [endpoint_slice])
    assert got["names"]["store.ns.svc"] == got["names"]["store.ns.svc.cluster.local"] == "10.96.0.9"
    assert got["ports"] == {"10.96.0.9:6379": [["127.64.1.2", 7000]]}


def test_pod_ips_are_routable_for_the_api_server_and_served_on_their_loopback_twin() -> None:
    cidr = podnet.random_node_cidr(random.Random(1))
    assert cidr.startswith("10.")
    assert cidr.endswith(".0/24")
    assert podnet.loopback_twin("10.64.3.9") == "127.64.3.9"
    with pytest.raises(ValueError, match="not in the runner pod network"):
        podnet.loopback_twin("10.244.0.5")


def test_runner_pods_skip_kwoks_fast_ready_and_delete_stages(tmp_path: Path) -> None:
    default = tmp_path / "in.yaml"
    default.write_text(
        yaml.safe_dump_all(
            [
                {"kind": "Stage", "metadata": {"name": "pod-ready"}, "spec": {"selector": {}}},
                {"kind": "Stage", "metadata": {"name": "pod-delete"}, "spec": {"selector": {}}},
                {"kind": "Stage", "metadata": {"name": "node-initialize"}, "spec": {"selector": {}}},
            ]
        )
    )
    docs = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(stages.compose(default, tmp_path / "out.yaml").read_text())
    }
    skip = {"key": stages.RUNNER_KEY, "operator": "DoesNotExist"}
    assert skip in docs["pod-ready"]["spec"]["selector"]["matchExpressions"]
    assert skip in docs["pod-delete"]["spec"]["selector"]["matchExpressions"]
    assert "matchExpressions" not in docs["node-initialize"]["spec"]["selector"]
    start = docs["pod-runner-start"]["spec"]
    assert {"key": stages.RUNNER_KEY, "operator": "Exists"} in start["selector"]["matchExpressions"]
    assert 'status: "False"' in start["next"]["statusTemplate"]  # Ready False until the runner says so
