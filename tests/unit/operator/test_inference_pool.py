"""Pure builders of a model's Gateway API inference extension objects: the InferencePool over the model's
pods, its endpoint picker and the optional HTTPRoute; opt-in per model or operator-wide."""

from __future__ import annotations

from modelyard.api import metadata as md
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.builders.endpoint_picker import build_endpoint_picker
from modelyard.operator.builders.inference_pool import build_http_route, build_inference_pool
from modelyard.operator.reconcile import desired_children
from modelyard.operator.settings import OperatorSettings
from tests.unit.operator.factories import SETTINGS, model

POOL_ON = {"inferencePool": {"enabled": True}}


def _pod_labels(m: object, settings: OperatorSettings = SETTINGS) -> dict[str, str]:
    return dict(build_deployment(m, settings)["spec"]["template"]["metadata"]["labels"])  # type: ignore[arg-type]


def test_off_by_default_nothing_is_emitted_and_pods_keep_their_labels() -> None:
    m = model()
    assert build_inference_pool(m, SETTINGS) is None
    assert build_http_route(m, SETTINGS) is None
    assert build_endpoint_picker(m, SETTINGS) == []
    assert not any(k.startswith("llm-d.ai/") for k in _pod_labels(m))
    assert {c["kind"] for c in desired_children(m, SETTINGS)} == {"Deployment", "Service"}


def test_the_pool_selects_the_models_pods_on_the_server_port_and_names_the_picker() -> None:
    m = model(**POOL_ON)
    pool = build_inference_pool(m, SETTINGS)
    assert pool is not None
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    selector = pool["spec"]["selector"]["matchLabels"]
    labels = _pod_labels(m)
    assert selector.items() <= labels.items()  # every pod of the Deployment matches
    assert labels["llm-d.ai/inferenceServing"] == "true"
    assert labels["llm-d.ai/model"] == "llama"
    assert pool["spec"]["targetPorts"] == [{"number": md.SERVER_PORT}]
    ref = pool["spec"]["endpointPickerRef"]
    assert ref == {"group": "", "kind": "Service", "name": "llama-epp", "port": {"number": 9002},
                   "failureMode": "FailClose"}  # fmt: skip
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_the_picker_has_its_account_rbac_deployment_and_service() -> None:
    m = model(**POOL_ON)
    objs = {o["kind"]: o for o in build_endpoint_picker(m, SETTINGS)}
    assert set(objs) == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"}
    for obj in objs.values():
        assert obj["metadata"]["name"] == "llama-epp"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        # Not a model-server object: the operator's status and drift watches key on this label.
        assert md.LABEL_MODEL not in obj["metadata"]["labels"]
    (container,) = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == SETTINGS.endpoint_picker_image
    assert container["image"].startswith("ghcr.io/llm-d/llm-d-inference-scheduler:")
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == "llama"
    assert args[args.index("--pool-namespace") + 1] == "team-a"
    assert "EndpointPickerConfig" in args[args.index("--config-text") + 1]
    svc_selector = objs["Service"]["spec"]["selector"]
    assert svc_selector.items() <= objs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    rules = objs["Role"]["rules"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]} in rules
    assert objs["RoleBinding"]["subjects"][0]["name"] == "llama-epp"


def test_picker_image_and_failure_mode_per_model() -> None:
    m = model(
        inferencePool={"enabled": True, "pickerImage": "registry.test/epp:1", "failureMode": "FailOpen"}
    )
    deployment = next(o for o in build_endpoint_picker(m, SETTINGS) if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/epp:1"
    pool = build_inference_pool(m, SETTINGS)
    assert pool is not None
    assert pool["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen"


def test_chart_wide_default_and_a_model_that_opts_out() -> None:
    on = SETTINGS.model_copy(update={"inference_pool_default": True})
    assert build_inference_pool(model(), on) is not None
    assert build_inference_pool(model(inferencePool={"enabled": False}), on) is None


def test_http_route_to_a_named_gateway() -> None:
    m = model(
        aliases=["l3"],
        inferencePool={
            "enabled": True,
            "gateway": {"name": "inference-gw", "namespace": "gw", "sectionName": "http"},
        },
    )
    route = build_http_route(m, SETTINGS)
    assert route is not None
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gw", "namespace": "gw",
         "sectionName": "http"}
    ]  # fmt: skip
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}
    ]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    by_header = model(
        inferencePool={"enabled": True, "gateway": {"name": "gw", "matchModelHeader": True}}, aliases=["l3"]
    )
    route = build_http_route(by_header, SETTINGS)
    assert route is not None
    headers = [m["headers"][0]["value"] for m in route["spec"]["rules"][0]["matches"]]
    assert headers == ["llama", "l3"]
    assert route["spec"]["parentRefs"][0]["namespace"] == "team-a"
