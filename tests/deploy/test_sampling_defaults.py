"""A saved chat model answers greedily (the same answer every time) and takes `temperature: 0`.
transformers' text-generation pipeline samples unless the model's generation config says otherwise, and
refuses temperature 0 while sampling; OpenAI-style clients send 0 for a deterministic answer."""

from __future__ import annotations

import json

MESSAGES = [{"role": "user", "content": "Do you sell helmets?"}]


def test_a_saved_model_answers_greedily_and_takes_temperature_zero(tmp_path, tiny_model_dir):
    import mlflow.pyfunc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.mlflow_model import save_mlflow_model

    save_mlflow_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                      tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model" / "generation_config.json").read_text())["do_sample"] is False
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    def answer(**request):
        return model.predict({"messages": MESSAGES, "max_tokens": 12, **request})[0]["choices"][0]["message"]["content"]

    first = answer()
    assert answer() == first == answer(temperature=0.0)  # greedy: the same answer every time
