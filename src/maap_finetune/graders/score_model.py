"""score_model: an Azure OpenAI deployment grades each completion (needs a real endpoint to run).

The grader's `input` messages are rendered per row and sent to the deployment named by `model`, asking
for structured output {"result": number, "steps": [...]}; `result` is the score, checked to lie in
`range` (default [0, 1]). The endpoint is the grader's `endpoint` field or `AZURE_OPENAI_ENDPOINT`; the
credential is the job's identity (`maap_finetune.common.identity`), never a key. Calls go through
azure-core's pipeline (retries, bearer-token policy) to the chat completions REST API, because the
`openai` package is not among this project's dependencies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

ENDPOINT_ENV = "AZURE_OPENAI_ENDPOINT"
API_VERSION_ENV = "AZURE_OPENAI_API_VERSION"
API_VERSION = "2024-10-21"  # the first GA version with json_schema structured outputs
SCOPE = "https://cognitiveservices.azure.com/.default"
SAMPLING_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "max_completions_tokens": "max_completion_tokens", "reasoning_effort": "reasoning_effort"}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "grade",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "steps": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}},
                    "required": ["description", "conclusion"], "additionalProperties": False}},
                "result": {"type": "number"},
            },
            "required": ["steps", "result"],
            "additionalProperties": False,
        },
    },
}


class ScoreModelHTTPError(RuntimeError):
    """The deployment answered with an HTTP error (the status decides whether the user can fix it)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


class AzureChatClient:
    """Chat completions of one Azure OpenAI resource, authenticated with an azure-identity credential."""

    def __init__(self, endpoint: str, credential: Any, api_version: str = API_VERSION, transport: Any = None):
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        self.endpoint = endpoint.rstrip("/")
        self.api_version = api_version
        self._client = PipelineClient(self.endpoint, transport=transport, policies=[
            policies.HeadersPolicy(), policies.RetryPolicy(),
            policies.BearerTokenCredentialPolicy(credential, SCOPE), policies.NetworkTraceLoggingPolicy(),
        ])

    def complete(self, deployment: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
        """The first choice's message content."""
        from azure.core.rest import HttpRequest

        url = f"{self.endpoint}/openai/deployments/{deployment}/chat/completions"
        body = {"messages": list(messages), "response_format": RESPONSE_FORMAT, **params}
        response = self._client.send_request(HttpRequest("POST", url, params={"api-version": self.api_version},
                                                         json=body))
        response.read()
        if response.status_code >= 400:
            raise ScoreModelHTTPError(response.status_code, f"deployment {deployment!r} of {self.endpoint} answered "
                                      f"{response.status_code}: {response.text()[:500]}")
        return response.json()["choices"][0]["message"]["content"]


def endpoint_of(spec: Mapping[str, Any]) -> str | None:
    return spec.get("endpoint") or os.environ.get(ENDPOINT_ENV) or None


def default_client(endpoint: str) -> AzureChatClient:
    from maap_finetune.common.identity import job_credential

    return AzureChatClient(endpoint, job_credential(), os.environ.get(API_VERSION_ENV) or API_VERSION)


def request_params(sampling_params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {SAMPLING_PARAMS[k]: v for k, v in (sampling_params or {}).items()}


def parse_score(content: str, low: float, high: float) -> float:
    """The `result` of the judge's answer; ValueError naming what is wrong."""
    try:
        result = json.loads(content)["result"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"the judge's answer has no JSON result: {content[:200]!r}") from None
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise ValueError(f"the judge's result {result!r} is not a number")
    if not low <= result <= high:
        raise ValueError(f"the judge's result {result} is outside the grader's range [{low}, {high}]")
    return float(result)
