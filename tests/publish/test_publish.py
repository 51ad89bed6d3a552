"""pipelines/publish.py against the fake workspace or registry of tests/azure_fakes.py
(an autospecced MLClient; assets kept as REST payloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import publish
from pipelines.definition import assets
from tests.azure_fakes import from_rest, patch_azure, request_payload, resource_id, rest_payload, system_data
from tests.helpers import assert_one_error

# Each test builds and publishes the whole pipeline against the autospec'd workspace (1.5-2.5 s apiece,
# about 35 s in all): the slow tier, so that `make test` stays under 4 minutes.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ["--subscription", "sub-1", "--resource-group", "rg-1", "--workspace", "ws-1"]
WORKSPACE_VARS = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME",
                  "AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME")
STEPS = sorted(p.parent.name for p in (REPO_ROOT / "components").glob("*/spec.yaml"))
ENVIRONMENTS = sorted(p.parent.name for p in (REPO_ROOT / "environments").glob("*/environment.yaml"))


class Assets:
    """`client.environments` or `client.components` as the service keeps them: each PUT body stored as
    the service answers it; `get` reads it back through `_from_rest_object`."""

    def __init__(self, operations, kind: str, collection: str):
        self.kind, self.collection = kind, collection
        self.payloads: dict[tuple[str, str], dict] = {}
        self.sent: dict[tuple[str, str], object] = {}  # the entities publish.py sent
        self.created: list[tuple[str, str]] = []
        operations.get.side_effect = self.get
        operations.create_or_update.side_effect = self.create_or_update

    def get(self, name, version=None, label=None):
        from azure.core.exceptions import ResourceNotFoundError

        if (name, version) not in self.payloads:
            raise ResourceNotFoundError(f"{name}:{version} not found")
        return from_rest(self.kind, self.payloads[(name, version)])

    def store(self, payload: dict) -> None:
        name, version = payload["id"].split(f"/{self.collection}/")[1].split("/versions/")
        self.payloads[(name, version)] = payload

    def create_or_update(self, entity, *args, **kwargs):
        key = (entity.name, str(entity.version))
        body = request_payload(entity)
        body.update(id=resource_id(self.collection, *key), name=key[1], systemData=system_data())
        self.store(body)
        self.sent[key] = entity
        self.created.append(key)
        return from_rest(self.kind, body)


@pytest.fixture
def azure(monkeypatch):
    """An autospecced MLClient (tests/azure_fakes.py) over an empty workspace or registry."""
    fake = patch_azure(monkeypatch)
    fake.environments = Assets(fake.client.environments, "environment", "environments")
    fake.components = Assets(fake.client.components, "component", "components")
    for var in WORKSPACE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(REPO_ROOT / "tests")  # no config.json here or above
    return fake


def spec(step: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "components" / step / "spec.yaml").read_text())


def env_spec(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "environments" / name / "environment.yaml").read_text())


def test_publishes_environments_components_and_pipeline_with_explicit_versions(azure, capsys):
    assert publish.main(WORKSPACE) == 0
    env_keys = {(env_spec(n)["name"], str(env_spec(n)["version"])) for n in ENVIRONMENTS}
    comp_keys = {(spec(s)["name"], str(spec(s)["version"])) for s in STEPS}
    assert set(azure.environments.sent) == env_keys
    assert set(azure.components.sent) == comp_keys | {("maap_finetune_pipeline", assets.project_version())}
    # Environments before the components that use them, components before the pipeline.
    assert azure.components.created[-1][0] == "maap_finetune_pipeline"
    assert azure.cls.call_args.kwargs == {"subscription_id": "sub-1", "resource_group_name": "rg-1", "workspace_name": "ws-1"}
    out = capsys.readouterr().out
    assert out.count(": created") == len(env_keys) + len(comp_keys) + 1


def test_components_reference_the_published_environment_not_a_file(azure):
    publish.main(WORKSPACE)
    for step in STEPS:
        s = spec(step)
        component = azure.components.sent[(s["name"], str(s["version"]))]
        env_folder = s["environment"].split("/")[-2]  # file:../../environments/<folder>/environment.yaml
        env = env_spec(env_folder)
        assert component.environment == f"azureml:{env['name']}:{env['version']}"
        assert component.tags[assets.HASH_TAG]
    # The committed YAML keeps its file: reference.
    assert all(spec(step)["environment"].startswith("file:") for step in STEPS)


def test_pipeline_component_wires_the_published_components_with_the_steps_defaults(azure):
    publish.main(WORKSPACE)
    pipeline = azure.components.sent[("maap_finetune_pipeline", assets.project_version())]
    assert type(pipeline).__name__ == "PipelineComponent"
    published = {s: f"{spec(s)['name']}:{spec(s)['version']}" for s in STEPS}
    assert {name: str(node.component) for name, node in pipeline.jobs.items()} == published
    finetune = spec("finetune")["inputs"]
    assert pipeline.inputs["lora_r"].type == "integer"
    assert pipeline.inputs["lora_r"].default == finetune["lora_r"]["default"]
    assert pipeline.inputs["learning_rate"].default == finetune["learning_rate"]["default"]
    assert pipeline.inputs["model_name"].optional is True and pipeline.inputs["model_path"].optional is True
    assert set(pipeline.outputs) >= {"mlflow_model", "evaluation", "registration"}
    assert pipeline._validate().passed


def test_second_publish_creates_nothing(azure, capsys):
    publish.main(WORKSPACE)
    created = list(azure.components.created) + list(azure.environments.created)
    capsys.readouterr()
    assert publish.main(WORKSPACE) == 0
    assert list(azure.components.created) + list(azure.environments.created) == created
    out = capsys.readouterr().out
    assert "unchanged (already published with the same content)" in out
    assert ": created" not in out


def test_changed_content_under_a_published_version_is_refused_before_anything_is_created(azure, capsys):
    publish.main(WORKSPACE)
    s = spec("finetune")
    key = (s["name"], str(s["version"]))
    published = azure.components.payloads[key]["properties"]  # published earlier with other content:
    for tags in (published["tags"], published["componentSpec"]["tags"]):  # the SDK reads the spec's copy
        tags[assets.HASH_TAG] = "0" * 64
    new_env = ("maap-finetune-train-gpu", "9.9.9")
    before = len(azure.components.created)
    rc = publish.main([*WORKSPACE, "--pipeline-version", "9.9.9"])
    assert_one_error(capsys, rc, "refusing to overwrite", f"component {key[0]}:{key[1]}", "different content",
                     "Bump the version", "nothing was created", on_error_line=True)
    assert len(azure.components.created) == before  # not even the new pipeline version
    assert new_env not in azure.environments.payloads


def test_version_published_by_someone_else_without_hash_is_refused(azure, capsys):
    env = env_spec("cpu")
    recorded = rest_payload("environment_published_elsewhere")  # no maap.content_sha256 tag
    recorded.update(id=resource_id("environments", env["name"], str(env["version"])), name=str(env["version"]))
    azure.environments.store(recorded)
    rc = publish.main(WORKSPACE)
    assert_one_error(capsys, rc, f"environment {env['name']}:{env['version']}", "without the maap.content_sha256 tag", on_error_line=True)
    assert azure.components.created == []


def test_new_pipeline_version_publishes_only_the_pipeline(azure, capsys):
    publish.main(WORKSPACE)
    capsys.readouterr()
    assert publish.main([*WORKSPACE, "--pipeline-version", "0.1.1"]) == 0
    assert azure.components.created[-1] == ("maap_finetune_pipeline", "0.1.1")
    assert capsys.readouterr().out.count(": created") == 1


def test_registry_uses_registry_references(azure):
    assert publish.main(["--registry", "shared-reg"]) == 0
    assert azure.cls.call_args.kwargs["registry_name"] == "shared-reg"
    s = spec("finetune")
    component = azure.components.sent[(s["name"], str(s["version"]))]
    assert component.environment == "azureml://registries/shared-reg/environments/maap-finetune-train-gpu/versions/0.1.0"
    pipeline = azure.components.sent[("maap_finetune_pipeline", assets.project_version())]
    assert str(pipeline.jobs["finetune"].component) == f"azureml://registries/shared-reg/components/{s['name']}/versions/{s['version']}"


def test_dry_run_without_workspace_lists_everything_offline(azure, capsys):
    from azure.ai.ml.exceptions import ValidationException

    azure.cls.from_config.side_effect = ValidationException(message="No config.json", no_personal_data_message="x")
    assert publish.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not compared with what is already published" in out
    assert f"pipeline component maap_finetune_pipeline:{assets.project_version()}: would publish" in out
    for step in STEPS:
        assert f"component {spec(step)['name']}:{spec(step)['version']}: would publish" in out
    assert azure.components.created == [] and azure.environments.created == []


def test_dry_run_with_workspace_says_what_would_change_and_creates_nothing(azure, capsys):
    publish.main([*WORKSPACE, "--pipeline-version", "0.1.0"])
    capsys.readouterr()
    assert publish.main([*WORKSPACE, "--dry-run", "--pipeline-version", "0.2.0"]) == 0
    out = capsys.readouterr().out
    assert "pipeline component maap_finetune_pipeline:0.2.0: would create" in out
    assert "component maap_finetune:0.1.0: unchanged" in out
    assert ("maap_finetune_pipeline", "0.2.0") not in azure.components.payloads


def test_content_hash_covers_code_and_included_library(monkeypatch, tmp_path):
    base = assets.component_assets(assets.Target(), assets.environment_assets())
    # Same inputs, same hash.
    again = assets.component_assets(assets.Target(), assets.environment_assets())
    assert {k: a.sha256 for k, a in base.items()} == {k: a.sha256 for k, a in again.items()}
    # A registry reference changes the definition, so the hash.
    other = assets.component_assets(assets.Target("r"), assets.environment_assets())
    assert base["finetune"].sha256 != other["finetune"].sha256
    # Files are part of the hash.
    f1, f2 = tmp_path / "a.py", tmp_path / "b.py"
    f1.write_text("x = 1\n")
    f2.write_text("x = 2\n")
    assert assets.content_hash({}, [("a.py", f1)]) != assets.content_hash({}, [("a.py", f2)])


def test_authentication_failure_is_one_clear_message(azure, capsys):
    from azure.core.exceptions import ClientAuthenticationError

    def refuse(name, version):
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token\nmore")

    azure.client.environments.get.side_effect = refuse
    rc = publish.main(WORKSPACE)
    assert_one_error(capsys, rc, "could not authenticate to Azure", "az login", on_error_line=True)


def test_no_workspace_is_one_clear_message(azure, capsys, tmp_path):
    from azure.ai.ml.exceptions import ValidationException

    azure.cls.from_config.side_effect = ValidationException(message="No config.json", no_personal_data_message="x")
    rc = publish.main([])
    assert_one_error(capsys, rc, "no Azure ML workspace configured", "config.json", on_error_line=True)


def test_registry_and_workspace_together_are_refused(azure, capsys):
    rc = publish.main(["--registry", "r", *WORKSPACE])
    assert_one_error(capsys, rc, "--registry or --workspace", on_error_line=True)


def test_registry_lookup_failure_is_one_clear_message(azure, capsys):
    from azure.core.exceptions import ClientAuthenticationError

    azure.cls.side_effect = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token\nmore")
    rc = publish.main(["--registry", "shared-reg", "--dry-run"])
    assert_one_error(capsys, rc, "could not authenticate to Azure while connecting to registry 'shared-reg'", "az login", on_error_line=True)
