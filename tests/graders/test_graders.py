"""Each grader against scores worked out by hand, templates, and the refusals of bad graders files."""

from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from maap_finetune.common.errors import UserError
from maap_finetune.graders import Sample, load_graders
from maap_finetune.graders import python_runner
from maap_finetune.graders.templates import render


def write(tmp_path: Path, grader: dict, name: str = "graders.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(grader), encoding="utf-8")
    return path


def check(op: str, text: str, ref: str) -> dict:
    return {"type": "string_check", "name": "check", "input": text, "reference": ref, "operation": op}


def similarity(metric: str) -> dict:
    return {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}", "evaluation_metric": metric}


def score(tmp_path, grader: dict, output: str, item: dict | None = None, **kwargs) -> float:
    graders = load_graders(write(tmp_path, grader), **kwargs)
    return graders.grade([Sample(output)], [item or {}])[0].score


@pytest.mark.parametrize(("op", "output", "reference", "expected"), [
    ("eq", "Paris", "Paris", 1.0), ("eq", "Paris", "paris", 0.0), ("ne", "Paris", "paris", 1.0),
    ("ne", "Paris", "Paris", 0.0), ("like", "It is Paris.", "Paris", 1.0), ("like", "It is paris.", "Paris", 0.0),
    ("ilike", "IT IS PARIS.", "Paris", 1.0), ("ilike", "It is Rome.", "Paris", 0.0),
])
def test_string_check_operations(tmp_path, op, output, reference, expected):
    grader = check(op, "{{sample.output_text}}", "{{item.answer}}")
    assert score(tmp_path, grader, output, {"answer": reference}) == expected


@pytest.mark.parametrize(("metric", "output", "reference", "expected"), [
    # Indel similarity: 1 - distance / total length = 1 - 2 / 10
    ("fuzzy_match", "hello", "hallo", 0.8),
    # equal lengths (brevity penalty 1); n-gram precisions 5/6, 3/5, 2/4, 1/3: (1/12) ** (1/4)
    ("bleu", "the cat sat on the mat", "the cat sat on a mat", (1 / 12) ** 0.25),
    # unigrams 2 of 3 either way; bigrams 1 of 2; longest common subsequence "the cat", 2 of 3
    ("rouge_1", "the cat sat", "the cat ran", 2 / 3),
    ("rouge_2", "the cat sat", "the cat ran", 1 / 2),
    ("rouge_3", "the cat sat", "the cat ran", 0.0),
    ("rouge_l", "the cat sat", "the cat ran", 2 / 3),
    # 1- to 4-grams: 3 of the 6 in each side match (the, cat, the cat): min(precision, recall) = 1/2
    ("gleu", "the cat sat", "the cat ran", 0.5),
    ("bleu", "same words here", "same words here", 1.0),
])
def test_text_similarity_metrics(tmp_path, metric, output, reference, expected):
    assert score(tmp_path, similarity(metric), output, {"reference": reference}) == pytest.approx(expected, abs=1e-4)


def multi(formula: str) -> dict:
    return {"type": "multi", "name": "total", "calculate_output": formula, "graders": {
        "exact": check("eq", "{{sample.output_text}}", "{{item.answer}}"),
        "fuzzy": {**similarity("fuzzy_match"), "reference": "{{item.answer}}"},
        "tagged": {"type": "python", "name": "tagged", "source":
                   "def grade(sample, item):\n    return 1.0 if sample['output_text'].startswith('<') else 0.0\n"},
    }}


def test_multi_formula_combines_named_scores(tmp_path):
    graders = load_graders(write(tmp_path, multi("0.5 * exact + 0.25 * fuzzy + 0.25 * tagged ^ 2")))
    grades = graders.grade([Sample("hello"), Sample("<x>")], [{"answer": "hallo"}, {"answer": "<x>"}])
    # row 1: 0.5 * 0 + 0.25 * 0.8 + 0.25 * 0 ** 2 (^ is power, binding tighter than +)
    assert grades[0].score == pytest.approx(0.2)
    assert grades[0].scores == pytest.approx({"exact": 0.0, "fuzzy": 0.8, "tagged": 0.0, "total": 0.2})
    assert grades[1].scores == pytest.approx({"exact": 1.0, "fuzzy": 1.0, "tagged": 1.0, "total": 1.0})
    assert graders.name == "total" and graders.item_fields == frozenset({"answer"})


def test_multi_formula_functions(tmp_path):
    graders = load_graders(write(tmp_path, multi("min(1, max(exact, sqrt(fuzzy))) - abs(-floor(tagged))")))
    [grade] = graders.grade([Sample("hello")], [{"answer": "hallo"}])
    assert grade.score == pytest.approx(math.sqrt(0.8))


def test_python_grader_sees_sample_and_item(tmp_path):
    source = ("import json\ndef grade(sample, item):\n    print('noise on stdout')\n"
              "    return len(sample['output_text']) / item['scale'] + sample['output_json']['bonus']\n")
    grader = {"type": "python", "name": "py", "source": source}
    assert score(tmp_path, grader, '{"bonus": 0.5}', {"scale": 28}) == pytest.approx(14 / 28 + 0.5)


def test_python_graders_run_in_one_process_per_call(tmp_path):
    graders = load_graders(write(tmp_path, multi("tagged + exact")))
    with mock.patch.object(python_runner.subprocess, "Popen", wraps=subprocess.Popen) as popen:
        grades = graders.grade([Sample(f"<{i}>") for i in range(6)], [{"answer": "<0>"}] * 6)
    assert popen.call_count == 1
    assert [g.score for g in grades] == [2.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_python_grader_that_raises_names_the_row(tmp_path):
    source = "def grade(sample, item):\n    x = 1\n    return item['missing']\n"
    graders = load_graders(write(tmp_path, {"type": "python", "name": "py", "source": source}))
    with pytest.raises(UserError) as err:
        graders.grade([Sample("a"), Sample("b")], [{}, {}], where=["train.jsonl:7", "train.jsonl:9"])
    message = str(err.value)
    assert message.startswith("train.jsonl:7: python grader 'py'") and "KeyError: 'missing'" in message
    assert "line 3" in message and str(tmp_path / "graders.json") in message


def test_python_grader_that_times_out_names_the_row(tmp_path):
    source = "def grade(sample, item):\n    while item['spin']:\n        pass\n    return 1.0\n"
    graders = load_graders(write(tmp_path, {"type": "python", "name": "py", "source": source}),
                           python_time_limit_s=0.5)
    with pytest.raises(UserError, match=r"^data.jsonl:2: python grader 'py' .*took longer than 0.5 s"):
        graders.grade([Sample("a"), Sample("b")], [{"spin": False}, {"spin": True}],
                      where=["data.jsonl:1", "data.jsonl:2"])


def test_python_grader_has_no_network(tmp_path):
    source = ("import socket\ndef grade(sample, item):\n    try:\n        socket.create_connection(('127.0.0.1', 9))\n"
              "    except PermissionError:\n        return 1.0\n    return 0.0\n")
    assert score(tmp_path, {"type": "python", "name": "py", "source": source}, "x") == 1.0


def test_python_grader_returning_a_non_number_is_refused(tmp_path):
    grader = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 'high'\n"}
    with pytest.raises(UserError, match=r"row 1: python grader 'py' .*returned 'high', not a finite number"):
        score(tmp_path, grader, "x")


def test_python_grader_failing_import_is_refused_at_load(tmp_path):
    grader = {"type": "python", "name": "py", "source": "import not_a_module_here\ndef grade(s, i):\n    return 1\n"}
    with pytest.raises(UserError, match=r"python grader 'py' fails when its source runs: ModuleNotFoundError"):
        load_graders(write(tmp_path, grader))


def test_score_model_with_a_fake_client(tmp_path, monkeypatch):
    from maap_finetune.graders.score_model import AzureChatClient

    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    client = mock.create_autospec(AzureChatClient, instance=True)
    client.complete.return_value = json.dumps({"steps": [], "result": 7})
    factory = mock.Mock(return_value=client)
    grader = {"type": "score_model", "name": "judge", "model": "gpt-4o-judge", "range": [0, 10],
              "sampling_params": {"temperature": 0, "seed": 3},
              "input": [{"role": "system", "content": "Grade 0-10."},
                        {"role": "user", "content": "Q: {{item.q}}\nA: {{sample.output_text}}"}]}
    assert score(tmp_path, grader, "four", {"q": "2+2?"}, score_model_client=factory) == 7.0
    factory.assert_called_once_with("https://example.openai.azure.com")
    client.complete.assert_called_once_with(
        "gpt-4o-judge", [{"role": "system", "content": "Grade 0-10."}, {"role": "user", "content": "Q: 2+2?\nA: four"}],
        {"temperature": 0, "seed": 3})
    client.complete.return_value = json.dumps({"steps": [], "result": 11})
    with pytest.raises(UserError, match=r"row 1: score_model grader 'judge'.*outside the grader's range \[0, 10\]"):
        score(tmp_path, grader, "four", {"q": "2+2?"}, score_model_client=factory)


def test_score_model_without_an_endpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    grader = {"type": "score_model", "name": "judge", "model": "m", "input": [{"role": "user", "content": "x"}]}
    with pytest.raises(UserError, match=r"grader 'judge': no Azure OpenAI endpoint"):
        load_graders(write(tmp_path, grader))


def test_templates_resolve_nested_and_json_values():
    item = {"a": {"b": "deep"}, "list": [{"x": 1}, {"x": 2}], "obj": {"k": [1, 2]}}
    sample = {"output_text": "out", "output_json": {"answer": 42}}
    text = "{{ item.a.b }}|{{item.list[1].x}}|{{item.list.0.x}}|{{item.obj}}|{{sample.output_text}}|" \
           "{{sample.output_json.answer}}|{{sample.output_json.nothing}}"
    assert render(text, item, sample) == 'deep|2|1|{"k": [1, 2]}|out|42|'


def test_row_problems_name_the_row_field_and_grader(tmp_path):
    grader = {**check("eq", "{{sample.output_text}}", "{{item.answer.text}}"), "name": "exact"}
    graders = load_graders(write(tmp_path, grader))
    assert graders.row_problems({"answer": {"text": "x"}}, "rft.jsonl:1") == []
    [problem] = graders.row_problems({"answer": "x"}, "rft.jsonl:4")
    assert problem.startswith("rft.jsonl:4: field 'answer.text' missing, read by grader 'exact'")
    with pytest.raises(UserError, match=r"rft.jsonl:4: field 'answer.text' missing, read by grader 'exact'"):
        graders.grade([Sample("x")], [{"answer": "x"}], where=["rft.jsonl:4"])


@pytest.mark.parametrize(("grader", "message"), [
    ({"type": "string_compare", "name": "s"}, r"grader 's': unknown type 'string_compare'"),
    ({**check("eq", "{{sample.output_text}}", "x"), "weight": 2}, r"grader 'check': unknown field weight"),
    (check("eq", "{{sample.text}}", "x"), r"grader 'check': input: \{\{sample.text\}\}: sample has output_text"),
    (check("eq", "{{row.answer}}", "x"), r"grader 'check': input: .*names namespace 'row'"),
    (check("startswith", "a", "b"), r"operation 'startswith' is not one of eq, ne, like, ilike"),
    (multi("exact + missing_one"), r"grader 'total': calculate_output 'exact \+ missing_one' names 'missing_one'"),
    (multi("__import__('os')"), r"only min, max, abs, floor, ceil, exp, sqrt, log can be called"),
    ({"type": "python", "name": "py", "source": "def grade(sample, item)\n    return 1\n"},
     r"grader 'py': source line 1: expected ':'"),
    ({"type": "python", "name": "py", "source": "def score(sample, item):\n    return 1\n"},
     r"grader 'py': source defines no top-level function grade"),
    (similarity("cosine"), r"evaluation_metric 'cosine' needs an embedding model"),
    (similarity("jaccard"), r"evaluation_metric 'jaccard' is not one of"),
    ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": multi("exact")}},
     r"a multi grader's graders cannot be multi graders"),
])
def test_bad_graders_are_refused_naming_file_and_grader(tmp_path, grader, message):
    path = write(tmp_path, grader)
    with pytest.raises(UserError, match=message) as err:
        load_graders(path)
    assert str(path) in str(err.value)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "graders.json"
    path.write_text('{"type": "string_check",\n "name": }', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:2:\d+: not valid JSON"):
        load_graders(path)


class FakeTransport:
    """azure-core's transport seam: records each request and answers with a canned chat completion."""

    def __init__(self, status: int, body: dict):
        self.status, self.body, self.requests = status, body, []

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def sleep(self, seconds):
        pass

    def send(self, request, **kwargs):
        import requests
        from azure.core.rest._requests_basic import RestRequestsTransportResponse

        self.requests.append(request)
        response = requests.Response()
        response.status_code = self.status
        response.raw = io.BytesIO(json.dumps(self.body).encode())
        response.headers["Content-Type"] = "application/json"
        return RestRequestsTransportResponse(request=request, internal_response=response)


class FakeCredential:
    def get_token(self, *scopes, **kwargs):
        import time

        from azure.core.credentials import AccessToken

        self.scopes = scopes
        return AccessToken("token-1", int(time.time()) + 3600)


def test_azure_chat_client_posts_chat_completions_with_a_bearer_token():
    from maap_finetune.graders.score_model import RESPONSE_FORMAT, AzureChatClient

    transport = FakeTransport(200, {"choices": [{"message": {"role": "assistant", "content": '{"result": 1}'}}]})
    credential = FakeCredential()
    client = AzureChatClient("https://res.openai.azure.com/", credential, "2024-10-21", transport=transport)
    assert client.complete("judge", [{"role": "user", "content": "hi"}], {"temperature": 0}) == '{"result": 1}'
    [request] = transport.requests
    assert request.method == "POST"
    assert request.url == "https://res.openai.azure.com/openai/deployments/judge/chat/completions?api-version=2024-10-21"
    assert request.headers["Authorization"] == "Bearer token-1"
    assert credential.scopes == ("https://cognitiveservices.azure.com/.default",)
    assert json.loads(request.content) == {"messages": [{"role": "user", "content": "hi"}],
                                           "response_format": RESPONSE_FORMAT, "temperature": 0}


def test_score_model_deployment_not_found_is_a_user_error(tmp_path):
    from maap_finetune.graders.score_model import AzureChatClient

    transport = FakeTransport(404, {"error": {"code": "DeploymentNotFound"}})
    grader = {"type": "score_model", "name": "judge", "model": "nope", "endpoint": "https://res.openai.azure.com",
              "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    factory = lambda endpoint: AzureChatClient(endpoint, FakeCredential(), transport=transport)  # noqa: E731
    with pytest.raises(UserError, match=r"row 1: score_model grader 'judge' .*answered 404.*DeploymentNotFound.*"
                                        r"Cognitive Services OpenAI User"):
        score(tmp_path, grader, "x", score_model_client=factory)


def test_preflight_grades_an_empty_completion_per_row_without_calling_judges(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    source = "def grade(sample, item):\n    return 1.0 / len(sample['output_text'] or item['fallback'])\n"
    grader = {"type": "multi", "name": "total", "calculate_output": "py + judge", "graders": {
        "py": {"type": "python", "name": "py", "source": source},
        "judge": {"type": "score_model", "name": "judge", "model": "m", "input": [{"role": "user", "content": "x"}]}}}
    factory = mock.Mock()
    graders = load_graders(write(tmp_path, grader), score_model_client=factory)
    graders.preflight([{"fallback": "ab"}, {"fallback": "abcd"}], where=["t.jsonl:1", "t.jsonl:2"])
    with pytest.raises(UserError, match=r"t.jsonl:2: python grader 'py' .*raised ZeroDivisionError"):
        graders.preflight([{"fallback": "ab"}, {"fallback": ""}], where=["t.jsonl:1", "t.jsonl:2"])
    factory.assert_not_called()


def test_explicit_output_json_and_a_formula_failing_on_a_row(tmp_path):
    grader = {"type": "multi", "name": "total", "calculate_output": "right / wrong ** 2", "graders": {
        "right": check("eq", "{{sample.output_json.city}}", "{{item.city}}"),
        "wrong": check("ne", "{{sample.output_json.city}}", "{{item.city}}")}}
    graders = load_graders(write(tmp_path, grader))
    [grade] = graders.grade([Sample("not json", output_json={"city": "Rome"})], [{"city": "Paris"}])
    assert grade.scores == {"right": 0.0, "wrong": 1.0, "total": 0.0}  # keys name sub-graders, not their names
    with pytest.raises(UserError, match=r"v.jsonl:5: multi grader 'total' .*fails on scores .*division by zero"):
        graders.grade([Sample('{"city": "Paris"}')], [{"city": "Paris"}], where=["v.jsonl:5"])
