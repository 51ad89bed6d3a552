"""`--maas` refuses what serverless fine-tuning does not train, from the cited tables in pipelines/maas_catalog.py,
before Data Prep runs or anything is uploaded."""

from __future__ import annotations

import pytest

from pipelines import maas_catalog, submit
from pipelines.definition.inputs import input_spec

MODEL = "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"
PREFERENCE = "data/sample/preference.jsonl"


def run_maas(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    return submit.main(["--maas", "--dry-run", "--model", MODEL, *extra])


def test_preference_data_is_refused_with_the_maap_command(tmp_path, monkeypatch, capfd):
    from pipelines.definition.inputs import REPO_ROOT

    rc = run_maas(tmp_path, monkeypatch, "--set", "task=preference", "--set", f"train_data={REPO_ROOT / PREFERENCE}")
    out, err = capfd.readouterr()
    assert rc == 2 and not (tmp_path / "runs").exists()  # refused before Data Prep ran
    assert "task preference under --maas" in err and "no serverless sample or recorded job trains preference" in err
    assert "--set task=preference --set training_method=dpo" in err
    assert "chatCompletion" not in out


@pytest.mark.parametrize(("method", "fragment"), [
    ("dpo", "offers no DPO; run it on your own compute: python pipelines/submit.py --compute"),
    ("rft", "reinforcement fine-tuning (RFT) is for Azure OpenAI reasoning models (o4-mini)"),
])
def test_training_methods_the_service_lacks_are_refused_with_the_reason(method, fragment, tmp_path, monkeypatch, capfd):
    rc = run_maas(tmp_path, monkeypatch, "--sample-data", "--set", f"training_method={method}")
    err = capfd.readouterr().err
    assert rc == 2 and f"--set training_method={method} under --maas" in err and fragment in err
    assert not (tmp_path / "runs").exists()


def test_the_task_table_covers_every_data_prep_task_and_only_chat_rows_become_chat_jobs():
    assert set(maas_catalog.TASKS) == set(input_spec("data_prep", "task").enum)
    trained = {task for task, (job_type, _) in maas_catalog.TASKS.items() if job_type}
    assert trained == {"chat", "instruction", "classification", "ner", "translation", "qa", "summarization"}
    assert maas_catalog.method_problem("sft") is None


def test_a_model_the_table_lists_without_fine_tuning_regions_is_refused(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    rc = submit.main(["--maas", "--dry-run", "--sample-data",
                      "--model", "azureml://registries/azureml-meta/models/Llama-3.2-3B-Instruct/versions/2"])
    err = capfd.readouterr().err
    assert rc == 2 and "trains Llama-3.2-3B-Instruct in no region" in err and "Phi-4-mini-instruct" in err


def test_the_region_table_reads_registry_names_and_workspace_locations():
    llama = maas_catalog.lookup("Meta-Llama-3.1-8B-Instruct")
    assert llama.name == "Llama 3.1 8B Instruct" and llama.marketplace and llama.regions == ("West US 3",)
    assert llama.runs_in("westus3") and not llama.runs_in("westus")
    phi = maas_catalog.lookup("Phi-4-mini-instruct")
    assert not phi.marketplace and phi.runs_in("eastus2") and not phi.runs_in("swedencentral")
    assert maas_catalog.lookup("Llama-3.3-70B-Instruct").regions == ("West US 3",)  # its two rows, united
    assert maas_catalog.lookup("Meta-Llama-3-8B") is None  # no row: the service answers


def test_a_model_without_a_row_is_planned_with_a_warning():
    from pipelines import maas

    args = submit.build_parser().parse_args(
        ["--maas", "--dry-run", "--sample-data", "--model", "azureml://registries/azureml-meta/models/Meta-Llama-3-8B/versions/8"])
    notes = maas.plan_job(args).notes
    assert any(n.startswith("warning: Meta-Llama-3-8B is not in the serverless fine-tuning table") for n in notes)


def test_the_readmes_examples_name_current_models_and_the_maas_one_is_in_the_table():
    import re

    from pipelines.definition.inputs import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    maas_models = re.findall(r"--maas --model azureml://registries/[^/]+/models/([^/\s`]+)/", readme)
    assert maas_models and all(maas_catalog.lookup(name) and maas_catalog.lookup(name).regions for name in maas_models)
    assert "Phi-3-mini-4k-instruct/versions/15`, the catalog's" not in readme  # retired 2025-08-30 (its tags)
