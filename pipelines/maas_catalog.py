"""What serverless fine-tuning (MaaS) trains, for which models and where: the tables `submit.py --maas` checks
before anything is uploaded. Each table names the source it was copied from; when a source changes, change
the table, not the code that reads it (`task_problem`, `method_problem`, `lookup`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The MaaP commands that train what the service does not (named in the refusals).
MAAP_DPO = ("python pipelines/submit.py --compute <gpu-cluster> --set task=preference --set training_method=dpo "
            "--set train_data=<pairs.jsonl>")
MAAP_TEXT = "python pipelines/submit.py --compute <gpu-cluster> --set task=text --set train_data=<corpus.jsonl>"
MAAP_GRPO = ("python pipelines/submit.py --compute <gpu-cluster> --set task=rft --set training_method=grpo "
             "--set train_data=<rft.jsonl> --set graders=<graders.json>")
_RFT_WHY = ("the service's reinforcement fine-tuning (RFT) is for Azure OpenAI reasoning models (o4-mini), not for "
            "registry models such as --model; fine-tune an Azure OpenAI deployment in Foundry for RFT, or run GRPO "
            f"with the same graders on your own compute: {MAAP_GRPO}")

CHAT_COMPLETION = "ChatCompletion"  # azure.ai.ml.finetuning.FineTuningTaskType.CHAT_COMPLETION

# Data Prep's task -> the serverless job type it becomes, or None and why the service does not train it.
# Sources: the serverless samples for open models, Azure/azureml-examples
# sdk/python/jobs/finetuning/standalone/model-as-a-service/ (chat-completion/ at 85865faed34037c88d2da66b3c46d6f57957a3a7,
# text-generation/ at 03a03dd95b8a758a2e95f47f898beb84ce9cbf33), and Microsoft Learn's "Fine-tune models by using
# serverless API deployments" (MicrosoftDocs/azure-ai-docs articles/ai-foundry/how-to/fine-tune-serverless.md at
# c6f355807e4737884cab1826441a109bbcd96047): the two data formats are chat completion (`messages`) and text
# generation (`prompt`/`completion` pairs). Neither offers preference pairs; the recorded serverless jobs
# (Azure/azure-sdk-assets python/sdk/ml/azure-ai-ml/tests/recordings/finetuning_job/) are chat or text completion.
# Every supervised task is Data Prep's `messages` rows (ARCHITECTURE.md), hence chat completion.
TASKS: dict[str, tuple[str | None, str]] = {
    **{task: (CHAT_COMPLETION, "Data Prep writes these rows as chat conversations")
       for task in ("chat", "instruction", "classification", "ner", "translation", "qa", "summarization")},
    "text": (None, "serverless text generation trains prompt/completion pairs, and task text rows hold only raw text; "
             f"give prompt/completion data as task instruction (trained as chat), or train raw text on your own "
             f"compute: {MAAP_TEXT}"),
    "preference": (None, "serverless fine-tuning trains chat and text completion only: no serverless sample or "
                   "recorded job trains preference pairs for an open model, and sending them as a chat job would "
                   f"train on rows without an assistant turn; run DPO on your own compute: {MAAP_DPO}"),
    "rft": (None, _RFT_WHY),
}

# Fine-Tune's training_method (and methods it does not have) under --maas.
# Sources: as TASKS (the serverless jobs are supervised); RFT: Microsoft Learn "Reinforcement fine-tuning (RFT) with
# Azure OpenAI o4-mini" (MicrosoftDocs/azure-ai-docs articles/ai-services/openai/how-to/reinforcement-fine-tuning.md
# at 9a26c08ae1955946c9d9d4faee6200b5081f2fc3): "only o4-mini supports RFT", an Azure OpenAI model.
TRAINING_METHODS: dict[str, tuple[bool, str]] = {
    "sft": (True, "serverless fine-tuning is supervised fine-tuning"),
    "dpo": (False, f"serverless fine-tuning of open models offers no DPO; run it on your own compute: {MAAP_DPO}"),
    "grpo": (False, _RFT_WHY),
    "rft": (False, _RFT_WHY),
}


def task_problem(task: str) -> str | None:
    """Why --maas refuses Data Prep task `task`, or None when the service trains it."""
    job_type, why = TASKS[task]
    return None if job_type else f"task {task} under --maas: {why}"


def method_problem(method: str) -> str | None:
    """Why --maas refuses `--set training_method=<method>`, or None."""
    if method not in TRAINING_METHODS:
        return (f"--set training_method={method}: Fine-Tune has no such method; under --maas only "
                f"{', '.join(m for m, (ok, _) in TRAINING_METHODS.items() if ok)} applies")
    ok, why = TRAINING_METHODS[method]
    return None if ok else f"--set training_method={method} under --maas: {why}"


# Models and the workspace regions where serverless fine-tuning runs them, with their offer: "Not applicable" is
# Azure's own (Microsoft) model, anything else a partner's Azure Marketplace offer that the workspace must subscribe
# to first (azureml-examples' MaaS notebook above: "Skip this step for 1P(Microsoft) models ... Phi family").
# Source: Microsoft Learn "Region availability for models in serverless API endpoints", the include
# MicrosoftDocs/azure-ai-docs articles/ai-foundry/includes/region-availability-maas.md at
# 986720af35085947dc8e61543241f3d892363eba (ms.date 11/24/2025), column "Hub/Project Region for Fine tuning";
# "Not available" is (). Rows as the page has them (Llama-3.3-70B-Instruct is in two rows there; `lookup` unites
# them). Only language models are copied; a model without a row is left to the service's own answer.
_MICROSOFT = "Not applicable"
_MARKETPLACE = "Azure Marketplace (Microsoft Managed Countries/Regions)"
_SIX = ("East US 2", "East US", "North Central US", "South Central US", "West US", "West US 3")
FINE_TUNING_REGIONS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("Cohere Command R+ 08-2024", "Cohere Command R 08-2024"), _MARKETPLACE, ()),
    (("DeepSeek-V3-0324", "DeepSeek-R1"), _MICROSOFT, ()),
    (("Llama 3.1 405B Instruct",), _MARKETPLACE, ()),
    (("Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.3-70B-Instruct", "Llama-Guard-3-11B-Vision",
      "Llama-Guard-3-1B", "Llama-3.2-3B", "Llama-3.2-1B"), _MARKETPLACE, ()),
    (("Llama 3.1 8B Instruct", "Llama-3.2-11B-Vision-Instruct", "Llama-3.2-90B-Vision-Instruct",
      "Llama 3.3 70B Instruct"), _MARKETPLACE, ("West US 3",)),
    (("MAI-DS-R1",), _MICROSOFT, ()),
    (("Phi-4-reasoning", "Phi-4-mini-reasoning"), _MICROSOFT, ()),
    (("Phi-4", "Phi-4-mini-instruct", "Phi-4-multimodal-instruct"), _MICROSOFT, _SIX),
    (("mistral-document-ai-2505", "Codestral-2501", "Mistral Small 25.03", "Mistral Medium 3 (25.05)"),
     _MARKETPLACE, ()),
    (("Ministral-3B",), _MARKETPLACE, _SIX),
    (("tsuzumi-7b",), _MARKETPLACE, _SIX),
)
SOURCE = ("Microsoft Learn, Region availability for models in serverless API endpoints "
          "(azure-ai-docs articles/ai-foundry/includes/region-availability-maas.md, 2025-11-24)")


def region_key(region: str) -> str:
    """`East US 2` and `eastus2` (a workspace's location) alike."""
    return re.sub(r"[^a-z0-9]", "", region.lower())


def model_key(name: str) -> str:
    """A model's name as the table and the registries spell it: `Llama 3.1 8B Instruct` and the registry's
    `Meta-Llama-3.1-8B-Instruct` alike."""
    key = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return key.removeprefix("meta-")


@dataclass(frozen=True)
class ServerlessModel:
    name: str  # as the table spells it
    regions: tuple[str, ...]  # where serverless fine-tuning runs it; () when it does not fine-tune it
    marketplace: bool  # a partner's offer: the workspace needs a marketplace subscription first

    def runs_in(self, location: str) -> bool:
        return region_key(location) in {region_key(r) for r in self.regions}


def lookup(model_name: str) -> ServerlessModel | None:
    """The table's entry for a registry model name, or None when the table has no row for it."""
    found = [(name, offer, regions) for names, offer, regions in FINE_TUNING_REGIONS for name in names
             if model_key(name) == model_key(model_name)]
    if not found:
        return None
    regions = tuple(dict.fromkeys(r for _, _, rs in found for r in rs))
    return ServerlessModel(name=found[0][0], regions=regions, marketplace=found[0][1] != _MICROSOFT)


def fine_tunable() -> list[str]:
    """The table's models that serverless fine-tuning trains somewhere (for messages and the README)."""
    return [name for names, _, regions in FINE_TUNING_REGIONS if regions for name in names]
