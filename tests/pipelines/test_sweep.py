"""The sweep spec (pipelines/definition/sweep.py) and the local sampling and early-termination rules (pipelines/local/policy.py)."""

from __future__ import annotations

import math
import random

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from pipelines.definition.sweep import load_sweep_file, parse_expression, sweep_from_args
from pipelines.definition.sweep_check import check_sweep
from pipelines.local import policy as sweep_policy
from pipelines.local.policy import sample_trials, should_stop


def spec_of(*sets: str, **fields):
    spec = sweep_from_args(None, list(sets))
    for key, value in fields.items():
        setattr(spec, key, value)
    return spec


def test_expressions_parse_as_azure_distributions():
    assert parse_expression("lr", "choice(1e-4, 2e-4)") == {"type": "choice", "values": [0.0001, 0.0002]}
    assert parse_expression("lr", "loguniform(-9,-4)") == {"type": "loguniform", "min_value": -9, "max_value": -4}
    assert parse_expression("r", "randint(8)") == {"type": "randint", "upper": 8}
    assert parse_expression("r", "[4,8]") == {"type": "choice", "values": [4, 8]}  # no shell quoting needed
    assert parse_expression("m", "choice(cosine,linear)") == {"type": "choice", "values": ["cosine", "linear"]}
    with pytest.raises(ValueError, match=r"expected one of choice\(\.\.\.\)"):
        parse_expression("lr", "{1,2}")
    with pytest.raises(ValueError, match="uniform takes 2 numbers"):
        parse_expression("lr", "uniform(1)")


def test_sweep_file_reads_azure_keys_and_names_every_problem(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text("search_space:\n  lora_r: {type: choice, values: [8, 16]}\n  warmup_ratio: 'uniform(0, 0.1)'\n"
                    "sampling_algorithm: {type: random, seed: 3}\nlimits: {max_total_trials: 5, max_concurrent_trials: 2}\n")
    spec = load_sweep_file(good)
    assert spec.search_space["warmup_ratio"] == {"type": "uniform", "min_value": 0, "max_value": 0.1}
    assert (spec.algorithm, spec.seed, spec.total_trials, spec.max_concurrent_trials) == ("random", 3, 5, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("search_space:\n  lora_r: {type: choice, vals: [8]}\nlimit: {}\nlimits: {max_trials: 3}\n")
    with pytest.raises(ConfigErrors) as err:
        load_sweep_file(bad)
    assert len(err.value.problems) == 3 and all(str(bad) in p for p in err.value.problems)
    with pytest.raises(UserError, match="cannot read it"):
        load_sweep_file(tmp_path / "missing.yaml")


def test_time_limits_read_from_the_file_and_sweep_limit_and_refused_when_not_whole_seconds_from_60(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("search_space:\n  lora_r: 'choice(4,8)'\nlimits: {timeout: 86400, trial_timeout: 3600}\n")
    spec = sweep_from_args(str(path), [], ["trial_timeout=7200", "max_total_trials=1"])  # the flag replaces the file's
    assert (spec.timeout, spec.trial_timeout, spec.max_total_trials) == (86400, 7200, 1)
    assert check_sweep(spec, {}, {}) == []
    # The SDK raises a timeout under 60 s to 60 (SweepJobLimits); a fraction it drops: both refused, naming file and key.
    bad = tmp_path / "bad.yaml"
    bad.write_text("search_space:\n  lora_r: 'choice(4,8)'\nlimits: {timeout: 30, trial_timeout: 90.5, wall_clock: 5}\n")
    with pytest.raises(ConfigErrors) as err:
        load_sweep_file(bad)
    assert err.value.problems == [
        f"{bad}: limits: unknown wall_clock; limits: max_total_trials, max_concurrent_trials, timeout, trial_timeout",
        f"{bad}: limits.timeout must be whole seconds >= 60 (Azure ML's SDK raises a shorter one to 60 s); got 30",
        f"{bad}: limits.trial_timeout must be whole seconds >= 60 (Azure ML's SDK raises a shorter one to 60 s); got 90.5",
    ]
    with pytest.raises(ConfigErrors) as err:
        sweep_from_args(None, ["lora_r=[4,8]"], ["timeout=1h", "trial_timout=60", "trial_timeout=true"])
    assert [p.split(":")[0] for p in err.value.problems] == [
        "--sweep-limit 'timeout=1h'", "--sweep-limit 'trial_timout=60'", "--sweep-limit 'trial_timeout=true'"]
    assert "expected key=N with key one of" in err.value.problems[1]
    with pytest.raises(ConfigErrors, match="no sweep to limit"):
        sweep_from_args(None, [], ["timeout=3600"])
    assert check_sweep(spec_of("lora_r=[4,8]", trial_timeout=59), {}, {}) == [
        "limits.trial_timeout must be whole seconds >= 60 (Azure ML's SDK raises a shorter one to 60 s); got 59"]


def test_sweep_set_adds_to_the_file_and_grid_is_the_default_over_choices(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("search_space:\n  lora_r: {type: choice, values: [8, 16]}\n")
    spec = sweep_from_args(str(path), ["learning_rate=choice(0.001,0.005)", "lora_r=choice(4,8,16)"])
    assert spec.search_space["lora_r"]["values"] == [4, 8, 16]
    assert (spec.algorithm, spec.total_trials) == ("grid", 6)
    assert check_sweep(spec, {}, {}) == []
    assert spec_of("warmup_ratio=uniform(0,0.1)").algorithm == "random"


def test_check_converts_values_to_the_inputs_types_and_reports_every_problem():
    spec = spec_of("learning_rate=choice(1e-4,2)", "lora_r=uniform(4,8)", "max_seq_length=choice(128,256)",
                   "lora_alpha=choice(8)", "foo=choice(1)", "peft_method=choice(lora,dora)", "warmup_ratio=uniform(0,0.9)")
    problems = check_sweep(spec, {"lora_alpha": "16"}, {})
    text = "\n".join(problems)
    assert "learning_rate must be <= 1.0; got 2.0" in text
    assert "integer input takes choice(...) or randint(...)" in text
    assert "'max_seq_length' feeds data_prep, finetune" in text
    assert "'lora_alpha' is both set (--set) and swept" in text
    assert "sweep 'foo': not an input of finetune" in text
    assert "warmup_ratio must be <= 0.5" in text
    assert "max_total_trials is needed" in text
    ok = spec_of("finetune.learning_rate=choice(1e-4,2e-4)", "peft_method=choice(lora,dora)")
    assert check_sweep(ok, {}, {}) == []
    assert ok.search_space["learning_rate"]["values"] == [0.0001, 0.0002]


def test_early_termination_needs_eval_loss_with_eval_steps_and_the_best_checkpoint():
    policy = {"type": "bandit", "slack_factor": 0.1, "evaluation_interval": 1, "delay_evaluation": 1}
    on_final = spec_of("lora_r=choice(4,8)", early_termination=policy)
    assert any("final_eval_loss is logged once" in p for p in check_sweep(on_final, {}, {}))
    on_eval = spec_of("lora_r=choice(4,8)", early_termination=policy, primary_metric="eval_loss")
    problems = check_sweep(on_eval, {}, {})
    assert any("finetune.eval_steps" in p for p in problems) and any("load_best_model_at_end=true" in p for p in problems)
    fine = {"finetune": {"eval_steps": "5", "load_best_model_at_end": "true"}}
    assert check_sweep(spec_of("lora_r=choice(4,8)", early_termination=policy, primary_metric="eval_loss"), {}, fine) == []
    both = spec_of("lora_r=choice(4,8)", primary_metric="eval_loss",
                   early_termination={"type": "bandit", "slack_factor": 0.1, "slack_amount": 0.2})
    assert any("exactly one of slack_factor" in p for p in check_sweep(both, {}, fine))
    truncation = spec_of("lora_r=choice(4,8)", primary_metric="eval_loss", early_termination={"type": "truncation_selection"})
    assert any("must be one of bandit, median_stopping" in p for p in check_sweep(truncation, {}, fine))


def test_grid_runs_every_combination_in_order_and_random_is_seeded_and_distinct():
    space = {"lr": {"type": "choice", "values": [1, 2]}, "r": {"type": "choice", "values": [4, 8]}}
    assert sample_trials(space, "grid", 4, None) == [{"lr": 1, "r": 4}, {"lr": 1, "r": 8}, {"lr": 2, "r": 4}, {"lr": 2, "r": 8}]
    drawn = sample_trials(space, "random", 4, seed=5)
    assert drawn == sample_trials(space, "random", 4, seed=5)
    assert sorted(map(str, drawn)) == sorted(map(str, sample_trials(space, "grid", 4, None)))  # distinct while any are left


def test_draws_follow_the_sdk_definitions():
    rng = random.Random(0)
    for _ in range(200):
        assert 0.0 <= sweep_policy.draw({"type": "uniform", "min_value": 0.0, "max_value": 0.1}, rng) <= 0.1
        assert math.exp(-9) <= sweep_policy.draw({"type": "loguniform", "min_value": -9, "max_value": -4}, rng) <= math.exp(-4)
        assert sweep_policy.draw({"type": "randint", "upper": 3}, rng) in (0, 1, 2)
        assert sweep_policy.draw({"type": "quniform", "min_value": 0, "max_value": 10, "q": 2}, rng) % 2 == 0


BANDIT = {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 1, "delay_evaluation": 0}


def test_bandit_mirrors_the_docs_example_for_minimize():
    # The doc's example (maximize): best 0.8, slack_factor 0.2 -> stop below 0.8/1.2 = 0.667. Minimizing a loss
    # of 1.0 with the same slack, the limit is 1.2.
    others = [[1.5, 1.0]]
    assert should_stop(BANDIT, "minimize", [1.3, 1.19], others, 2) is None
    reason = should_stop(BANDIT, "minimize", [1.3, 1.25], others, 2)
    assert reason and "limit 1.2000" in reason
    assert should_stop({**BANDIT, "slack_factor": None, "slack_amount": 0.1}, "minimize", [1.3, 1.15], others, 2)
    assert should_stop(BANDIT, "maximize", [0.6], [[0.8]], 1)  # the doc's own numbers: 0.6 < 0.667
    assert should_stop(BANDIT, "maximize", [0.7], [[0.8]], 1) is None


def test_policy_waits_for_delay_and_applies_at_multiples_of_the_interval():
    policy = {**BANDIT, "evaluation_interval": 2, "delay_evaluation": 3}
    others, own = [[1.0] * 6], [5.0] * 6
    assert [n for n in range(1, 7) if should_stop(policy, "minimize", own, others, n)] == [4, 6]


def test_median_stopping_compares_the_best_with_the_median_of_running_averages():
    policy = {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 0}
    others = [[2.0, 1.0], [3.0, 2.0]]  # running averages at interval 2: 1.5 and 2.5
    # own [2.4, 2.3]: average 2.35, median(1.5, 2.5, 2.35) = 2.35; its best 2.3 is not worse -> goes on
    assert should_stop(policy, "minimize", [2.4, 2.3], others, 2) is None
    # own [3.0, 2.9]: average 2.95, median(1.5, 2.5, 2.95) = 2.5; its best 2.9 is worse -> stopped
    reason = should_stop(policy, "minimize", [3.0, 2.9], others, 2)
    assert reason and "median 2.5000" in reason
    assert should_stop(policy, "minimize", [3.0, 2.9], [], 2) is None  # nobody to compare with


def test_dry_run_shows_the_sweep_node_and_a_bad_sweep_exits_2(capsys):
    import yaml

    from pipelines import submit

    assert submit.main(["--dry-run", "--sample-data", "--sweep-set", "lora_r=[8,16]",
                        "--sweep-set", "learning_rate=choice(1e-4,2e-4)"]) == 0
    node = yaml.safe_load(capsys.readouterr().out)["jobs"]["finetune"]
    assert node["type"] == "sweep" and node["sampling_algorithm"] == "grid"
    assert node["objective"] == {"goal": "minimize", "primary_metric": "final_eval_loss"}
    assert node["limits"] == {"max_total_trials": 4}
    assert submit.main(["--dry-run", "--sample-data", "--sweep-set", "lora_r=[8,16]", "--sweep-limit", "timeout=7200",
                        "--sweep-limit", "trial_timeout=3600"]) == 0
    node = yaml.safe_load(capsys.readouterr().out)["jobs"]["finetune"]
    assert node["limits"] == {"max_total_trials": 2, "timeout": 7200, "trial_timeout": 3600}
    assert submit.main(["--dry-run", "--sample-data", "--sweep-set", "lora_r=choice(8,16)", "--set", "lora_r=8"]) == 2
    assert "'lora_r' is both set (--set) and swept" in capsys.readouterr().err


def test_local_reads_the_sweep_once_and_keeps_the_swept_inputs_out_of_the_profile(monkeypatch, tmp_path, capsys):
    """run_local reads --sweep/--sweep-set once, and the pipeline it runs sweeps what the user asked."""
    from pipelines import submit
    from pipelines.definition import sweep
    from pipelines.local import defaults as local_defaults
    from pipelines.local import runner as local_runner

    monkeypatch.chdir(tmp_path)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    monkeypatch.setattr(local_defaults, "ensure_tiny_model", lambda cache_dir, **kw: tiny)
    reads = []
    monkeypatch.setattr(sweep, "load_sweep_file", lambda path: reads.append(path) or load_sweep_file(path))
    ran = {}

    def fake_run(job, **kwargs):
        ran["job"] = job
        return local_runner.LocalRunResult("rid", tmp_path / "runs" / "rid", "sqlite:////x/mlruns.db", "maap-finetune",
                                           "parent", {}, 1.0)

    monkeypatch.setattr(local_runner, "run_pipeline", fake_run)
    path = tmp_path / "sweep.yaml"
    path.write_text("search_space:\n  learning_rate: {type: choice, values: [0.001, 0.01]}\n")
    assert submit.main(["--local", "--sweep", str(path), "--sweep-set", "lora_r=[4,8]"]) == 0
    assert reads == [str(path)]
    finetune = ran["job"].jobs["finetune"]
    assert finetune.type == "sweep" and set(finetune.search_space) == {"learning_rate", "lora_r"}
    profile = capsys.readouterr().out.split("local profile", 1)[1].splitlines()[0]
    assert "epochs=3" in profile and "learning_rate" not in profile  # swept, so not set by the profile
