"""maap-finetune's checkov check for the workspace's Key Vault in Bicep.

Azure ML adds an access policy for the workspace identity when it creates the workspace; a template
that declares `accessPolicies` (even `[]`) removes it again on every redeploy. The vault must use
Azure RBAC (`enableRbacAuthorization: true`) and declare no access policies; the template grants
the workspace identity a role instead.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


class KeyVaultUsesRbac(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(name="Key Vault uses Azure RBAC and declares no access policies", id="CKV_MAAP_6",
                         categories=(CheckCategories.IAM,), supported_resources=("Microsoft.KeyVault/vaults",))

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["properties/enableRbacAuthorization", "properties/accessPolicies"]
        props = conf.get("properties")
        if not isinstance(props, dict):
            return CheckResult.FAILED
        rbac = props.get("enableRbacAuthorization") is True
        return CheckResult.PASSED if rbac and "accessPolicies" not in props else CheckResult.FAILED


check = KeyVaultUsesRbac()
