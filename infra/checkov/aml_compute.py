"""maap-finetune's own checkov checks for Azure ML compute clusters in Bicep.

checkov has no Bicep checks for `Microsoft.MachineLearningServices/workspaces/computes`; these
enforce what infra/README.md promises for every cluster: scale to zero, scale down when idle,
no public SSH, a managed identity, no local (key) authentication. Loaded with
`checkov --external-checks-dir infra/checkov` (see infra/scan.py).
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

COMPUTE = ("Microsoft.MachineLearningServices/workspaces/computes",)


def _aml_properties(conf: dict[str, Any]) -> dict[str, Any] | None:
    """The AmlCompute properties block, or None when the compute is another type."""
    outer = conf.get("properties")
    if not isinstance(outer, dict) or str(outer.get("computeType", "")).lower() != "amlcompute":
        return None
    inner = outer.get("properties")
    return inner if isinstance(inner, dict) else {}


class _AmlComputeCheck(BaseResourceCheck):
    def __init__(self, name: str, id: str, categories: tuple) -> None:
        super().__init__(name=name, id=id, categories=categories, supported_resources=COMPUTE)

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        props = _aml_properties(conf)
        if props is None:
            return CheckResult.UNKNOWN
        return CheckResult.PASSED if self.ok(conf, props) else CheckResult.FAILED

    def ok(self, conf: dict[str, Any], props: dict[str, Any]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class MinNodesZero(_AmlComputeCheck):
    def __init__(self) -> None:
        super().__init__("AmlCompute clusters scale to zero nodes (minNodeCount 0)", "CKV_MAAP_1", (CheckCategories.GENERAL_SECURITY,))

    def ok(self, conf, props):
        self.evaluated_keys = ["properties/properties/scaleSettings/minNodeCount"]
        scale = props.get("scaleSettings")
        return isinstance(scale, dict) and str(scale.get("minNodeCount")) == "0"


class IdleScaleDown(_AmlComputeCheck):
    def __init__(self) -> None:
        super().__init__("AmlCompute clusters scale idle nodes down (nodeIdleTimeBeforeScaleDown set)", "CKV_MAAP_2", (CheckCategories.GENERAL_SECURITY,))

    def ok(self, conf, props):
        self.evaluated_keys = ["properties/properties/scaleSettings/nodeIdleTimeBeforeScaleDown"]
        scale = props.get("scaleSettings")
        return isinstance(scale, dict) and bool(scale.get("nodeIdleTimeBeforeScaleDown"))


class NoPublicSsh(_AmlComputeCheck):
    def __init__(self) -> None:
        super().__init__("AmlCompute clusters accept no public SSH (remoteLoginPortPublicAccess Disabled)", "CKV_MAAP_3", (CheckCategories.NETWORKING,))

    def ok(self, conf, props):
        self.evaluated_keys = ["properties/properties/remoteLoginPortPublicAccess"]
        return str(props.get("remoteLoginPortPublicAccess", "")).lower() == "disabled"


class ManagedIdentity(_AmlComputeCheck):
    def __init__(self) -> None:
        super().__init__("AmlCompute clusters have a managed identity", "CKV_MAAP_4", (CheckCategories.IAM,))

    def ok(self, conf, props):
        self.evaluated_keys = ["identity/type"]
        identity = conf.get("identity")
        return isinstance(identity, dict) and "assigned" in str(identity.get("type", "")).lower()


class NoLocalAuth(_AmlComputeCheck):
    def __init__(self) -> None:
        super().__init__("AmlCompute clusters disable local (key) authentication", "CKV_MAAP_5", (CheckCategories.IAM,))

    def ok(self, conf, props):
        self.evaluated_keys = ["properties/disableLocalAuth"]
        return conf.get("properties", {}).get("disableLocalAuth") is True


checks = [MinNodesZero(), IdleScaleDown(), NoPublicSsh(), ManagedIdentity(), NoLocalAuth()]
