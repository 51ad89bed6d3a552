"""The local runner on fake components (plain scripts in tmp_path): real subprocesses, real MLflow."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from pipelines.definition.command import render_command
from pipelines.local import defaults as local_defaults
from pipelines.local import step as local_step
from pipelines.local import tracking as local_tracking
from pipelines.local.plan import Binding, StepPlan, plan_pipeline, topological_order
from pipelines.local.processes import process_environments
from pipelines.local.runner import run_pipeline
from pipelines.local.step import StepFailed
from maap_finetune.common.errors import UserError
from tests.pipelines import fakes


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory) -> Path:
    return fakes.write_fake_repo(tmp_path_factory.mktemp("fake-repo"))


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created once (creating them takes seconds); copy it per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-db") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def make_consume_job(root: Path, *, suffix=None, note=None, processes=2, nodes=1):
    from azure.ai.ml import dsl

    make, consume = fakes.load(root, "make"), fakes.load(root, "consume")

    @dsl.pipeline(name="fake_pipeline", experiment_name="fake-exp")
    def pipeline(text, suffix):
        produced = make(text=text, suffix=suffix)
        consumed = consume(data=produced.outputs.data, note=note)
        consumed.distribution = {"type": "pytorch", "process_count_per_instance": processes}
        consumed.resources = {"instance_count": nodes}
        return {"result": consumed.outputs.result}

    return pipeline(text="ab cd", suffix=suffix)


def seen(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"seen_{rank}.json").read_text())


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_render_command_keeps_blocks_with_values_and_drops_the_rest():
    command = (
        "python x.py --a '${{inputs.a}}' $[[--b ${{inputs.b}}]] $[[--c ${{inputs.a}} --d ${{inputs.d}}]] "
        "$[[--e ${{inputs.a}}]] --out ${{outputs.o}}"
    )
    text = render_command(command, {"a": "one two", "b": None, "d": None}, {"o": "/tmp/o"})
    # Pasted in as text, quotes and all, exactly as Azure ML does; the shell splits it later.
    assert " ".join(text.split()) == "python x.py --a 'one two' --e one two --out /tmp/o"
    text = render_command(command, {"a": "1", "b": "2", "d": "4"}, {"o": "/o"})
    assert " ".join(text.split()) == "python x.py --a '1' --b 2 --c 1 --d 4 --e 1 --out /o"


def test_render_command_rejects_missing_values_and_undeclared_references():
    with pytest.raises(UserError, match="input 'a' has no value and is outside"):
        render_command("python x.py --a ${{inputs.a}}", {"a": None}, {})
    with pytest.raises(UserError, match=r"inputs\.zz.*does not declare"):
        render_command("python x.py --a ${{inputs.zz}}", {"a": "1"}, {})


def _run_text_step(tmp_path: Path, command: str, text: str):
    """A one-step pipeline whose component echoes its argv; `command` decides how `text` is quoted."""
    from azure.ai.ml import dsl, load_component

    folder = tmp_path / "components" / "echo"
    folder.mkdir(parents=True)
    (folder / "echo.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    (folder / "spec.yaml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json\n"
        "type: command\nname: echo\nversion: 0.0.1\ncode: .\nenvironment: azureml:fake-env:1\n"
        "inputs:\n  text: {type: string}\noutputs:\n  out: {type: uri_folder}\n"
        f"command: >-\n  {command}\n"
    )
    echo = load_component(source=folder / "spec.yaml")

    @dsl.pipeline(name="echo_pipeline")
    def pipeline(text):
        echo(text=text)

    result = run_pipeline(pipeline(text=text), workdir=tmp_path, tracking_uri=None, out=io.StringIO())
    log = result.steps["echo"].log_paths[0].read_text()
    return json.loads(log.strip().splitlines()[-1])


def test_commands_run_in_bash_after_textual_substitution_as_in_azure(tmp_path):
    """What breaks in Azure ML breaks here: an unquoted value is split by the shell or is a syntax error."""
    quoted = "python echo.py --text '${{inputs.text}}' --out '${{outputs.out}}'"
    assert _run_text_step(tmp_path / "a", quoted, "Support bot v2 (July data)")[:2] == ["--text", "Support bot v2 (July data)"]
    bare = "python echo.py --text ${{inputs.text}} --out '${{outputs.out}}'"
    assert _run_text_step(tmp_path / "b", bare, "Support bot v2")[:4] == ["--text", "Support", "bot", "v2"]
    with pytest.raises(StepFailed, match="syntax error"):
        _run_text_step(tmp_path / "c", bare, "Support bot (July data)")
    # Shell syntax in a command is the shell's, as on a cluster.
    piped = "python echo.py --text '${{inputs.text}}' --out '${{outputs.out}}' | cat && echo '[\"after\"]'"
    assert _run_text_step(tmp_path / "d", piped, "x") == ["after"]


def test_process_environments_match_what_azure_ml_sets_per_rank():
    envs = process_environments(process_count=2, instance_count=2, port=29511)
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"]) for e in envs] == [
        ("0", "0", "0"), ("1", "1", "0"), ("2", "0", "1"), ("3", "1", "1"),
    ]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("127.0.0.1", "29511")}


def _plan(name, *depends):
    return StepPlan(name, name, "python x.py", Path("."), [], {}, {}, {}, list(depends))


def test_topological_order_follows_dependencies_not_declaration_order():
    steps = {s.name: s for s in [_plan("register", "evaluate", "finetune"), _plan("evaluate", "finetune", "prep"),
                                 _plan("finetune", "prep"), _plan("prep"), _plan("side")]}
    order = [s.name for s in topological_order(steps)]
    assert order == ["prep", "side", "finetune", "evaluate", "register"]
    with pytest.raises(UserError, match="cycle"):
        topological_order({"a": _plan("a", "b"), "b": _plan("b", "a")})
    with pytest.raises(UserError, match="not in the pipeline"):
        topological_order({"a": _plan("a", "ghost")})


def test_plan_reads_bindings_defaults_and_distribution_from_the_job(fake_repo):
    steps = plan_pipeline(make_consume_job(fake_repo, processes=3, nodes=2))
    assert [s.name for s in steps] == ["produced", "consumed"]
    produced, consumed = steps
    assert produced.bindings["text"] == Binding("value", "ab cd")
    assert produced.bindings["suffix"].kind == "unset"  # optional pipeline input given as None
    assert produced.bindings["count"].kind == "unset"  # not bound: the component default applies
    assert consumed.bindings["data"] == Binding("output", node="produced", port="data")
    assert consumed.depends_on == ["produced"]
    assert (consumed.distribution, consumed.process_count, consumed.instance_count) == ("pytorch", 3, 2)
    assert (produced.distribution, produced.process_count) == (None, 1)
    assert produced.includes == [(fake_repo / "lib" / "fakelib").resolve()]


# ---------------------------------------------------------------------------------------------
# Real runs


def test_run_resolves_inputs_snapshots_includes_and_runs_n_ranks(fake_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    out = io.StringIO()
    job = make_consume_job(fake_repo, suffix="!", processes=2)
    result = run_pipeline(
        job, workdir=tmp_path, tracking_uri=None, run_id="r1", out=out, env={"EXTRA_FOR_STEPS": "yes"}, stream=True
    )

    run_dir = tmp_path / "runs" / "r1"
    assert result.run_dir == run_dir
    produced_out = run_dir / "produced" / "outputs" / "data"
    assert result.steps["produced"].outputs["data"] == produced_out
    # ${{inputs.*}} resolved (a value with a space stays one argument; count from the YAML default;
    # a boolean as Azure ML renders it), the optional block kept because suffix was given.
    assert (produced_out / "value.txt").read_text() == "ab cdab cd!"
    first = seen(produced_out)
    assert first["argv"] == ["--text", "ab cd", "--count", "2", "--flag", "False", "--suffix", "!", "--data", str(produced_out)]
    # Snapshot: the code folder plus the additional include, as the working directory.
    snapshot = run_dir / "produced" / "snapshot"
    assert first["cwd"] == str(snapshot)
    assert (snapshot / "make.py").is_file() and (snapshot / "spec.yaml").is_file()
    assert first["fakelib"] == str(snapshot / "fakelib" / "__init__.py")
    assert first["executable"] == sys.executable
    assert first["env"]["PYTHONPATH"].split(":") == [str(snapshot), "/somewhere/else"]
    assert first["env"]["RANK"] is None  # not a distributed step
    assert first["env"]["MLFLOW_RUN_ID"] is None  # tracking off
    assert first["env"]["EXTRA_FOR_STEPS"] == "yes"

    # The consumer read the producer's output; its optional --note block was dropped.
    result_dir = run_dir / "consumed" / "outputs" / "result"
    assert (result_dir / "copy.txt").read_text() == "ab cdab cd!"
    ranks = [seen(result_dir, rank) for rank in (0, 1)]
    assert ranks[0]["argv"] == ["--data", str(produced_out), "--result", str(result_dir)]
    envs = [r["env"] for r in ranks]
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"]) for e in envs] == [("0", "0", "0"), ("1", "1", "0")]
    assert {(e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"], e["MASTER_ADDR"]) for e in envs} == {("2", "2", "127.0.0.1")}
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and int(envs[0]["MASTER_PORT"]) > 0
    assert sorted(p.name for p in (run_dir / "consumed" / "logs").iterdir()) == ["std_log_process_0.txt", "std_log_process_1.txt"]

    progress = out.getvalue()
    assert "[1/2] produced: running (1 process); log: " + str(run_dir / "produced" / "logs" / "std_log.txt") in progress
    assert "[2/2] consumed: running (2 processes)" in progress
    assert "consumed: done in" in progress
    assert "made ab cd\n" in progress  # stream=True echoes the step's log


def test_two_nodes_run_on_this_machine_with_node_rank(fake_repo, tmp_path):
    job = make_consume_job(fake_repo, processes=1, nodes=2, note="hi")
    out = io.StringIO()
    result = run_pipeline(job, workdir=tmp_path, tracking_uri=None, run_id="r2", out=out)
    assert "made" not in out.getvalue()  # logs stay in their files unless streamed
    result_dir = result.steps["consumed"].outputs["result"]
    envs = [seen(result_dir, rank)["env"] for rank in (0, 1)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "0", "2", "1"), ("1", "0", "1", "2", "1"),
    ]
    assert seen(result_dir)["argv"][2:4] == ["--note", "hi"]  # the block is kept when note has a value


@pytest.mark.slow
def test_mlflow_parent_and_child_runs_in_sqlite(fake_repo, tmp_path, monkeypatch, empty_mlflow_db):
    import shutil

    from azure.ai.ml import dsl
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_mlflow_db, tmp_path / "mlruns.db")
    make, tracked = fakes.load(fake_repo, "make"), fakes.load(fake_repo, "tracked")

    @dsl.pipeline(name="tracked_pipeline", display_name="Tracked pipeline", experiment_name="fake-exp")
    def pipeline(text):
        produced = make(text=text)
        tracked_step = tracked(data=produced.outputs.data)  # noqa: F841 (the DSL names the node after it)

    result = run_pipeline(pipeline(text="x"), workdir=tmp_path, out=io.StringIO())  # default sqlite:///mlruns.db
    db = tmp_path / "mlruns.db"
    assert result.tracking_uri == f"sqlite:///{db}" and db.is_file()

    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "Tracked pipeline"
    assert parent.data.params["text"] == "x"
    experiment = client.get_experiment(parent.info.experiment_id)
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == {"produced", "tracked_step"}
    assert all(run.info.status == "FINISHED" for run in children)
    assert experiment.name == "fake-exp"

    # The step resumed its own child run from MLFLOW_RUN_ID and logged into it.
    tracked_seen = seen(result.steps["tracked_step"].outputs["result"])
    child = by_name["tracked_step"]
    assert tracked_seen["active_run_id"] == child.info.run_id == result.steps["tracked_step"].mlflow_run_id
    assert tracked_seen["env"]["MLFLOW_TRACKING_URI"] == result.tracking_uri
    assert child.data.metrics["answer"] == 42
    assert child.data.tags["maap.step"] == "tracked_step"


def test_a_failing_step_stops_the_run_with_name_code_and_log_tail(fake_repo, tmp_path, empty_mlflow_db):
    import shutil

    from azure.ai.ml import dsl
    from mlflow import MlflowClient

    make, fail, consume = (fakes.load(fake_repo, n) for n in ("make", "fail", "consume"))

    @dsl.pipeline(name="failing", experiment_name="fake-exp")
    def pipeline(text):
        produced = make(text=text)
        broken = fail(data=produced.outputs.data)
        consume(data=broken.outputs.result)

    shutil.copy(empty_mlflow_db, tmp_path / "track.db")
    uri = f"sqlite:///{tmp_path / 'track.db'}"
    with pytest.raises(StepFailed) as caught:
        run_pipeline(pipeline(text="x"), workdir=tmp_path, tracking_uri=uri, run_id="r3", out=io.StringIO())
    err = caught.value
    assert (err.step, err.exit_code, err.rank) == ("broken", 3, None)
    assert err.log_path == tmp_path / "runs" / "r3" / "broken" / "logs" / "std_log.txt"
    assert "something went wrong: bad row 7" in err.tail
    assert "step 'broken' failed with exit code 3" in str(err) and "bad row 7" in str(err)
    assert not (tmp_path / "runs" / "r3" / "consume").exists()  # the next step never started

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fake-exp").experiment_id])
    status = {run.info.run_name: run.info.status for run in runs}
    assert status == {"failing": "FAILED", "produced": "FINISHED", "broken": "FAILED"}


def test_a_failing_step_with_stream_echoes_its_last_lines(fake_repo, tmp_path):
    """--stream shows the log as it grows; a step that fails shows its last words too, not only the tail."""
    from azure.ai.ml import dsl

    make, fail = fakes.load(fake_repo, "make"), fakes.load(fake_repo, "fail")

    @dsl.pipeline(name="failing_streamed")
    def pipeline(text):
        fail(data=make(text=text).outputs.data)

    out = io.StringIO()
    with pytest.raises(StepFailed):
        run_pipeline(pipeline(text="x"), workdir=tmp_path, tracking_uri=None, out=out, stream=True)
    assert "something went wrong: bad row 7" in out.getvalue()


def test_live_progress_comes_from_the_steps_progress_file(fake_repo, tmp_path):
    from azure.ai.ml import dsl

    make, progress = fakes.load(fake_repo, "make"), fakes.load(fake_repo, "progress")

    @dsl.pipeline(name="progress", experiment_name="fake-exp")
    def pipeline(text):
        progress(data=make(text=text).outputs.data)  # nodes named after their components

    out = io.StringIO()  # not a terminal: plain lines, the last step's always among them
    run_pipeline(pipeline(text="x"), workdir=tmp_path, tracking_uri=None, run_id="p", out=out)
    lines = [line for line in out.getvalue().splitlines() if "step " in line]
    assert lines[-1] == "  fake_progress: step 3/3 (100%)  loss 1.0000  1,000 tok/s  ETA 0:00"
    assert 1 <= len(lines) <= 2  # at most one line every 10 s, plus the last
    logs = tmp_path / "runs" / "p" / "fake_progress" / "logs"
    assert len((logs / "progress.jsonl").read_text().splitlines()) == 3
    assert "step" not in (logs / "std_log.txt").read_text()  # the numbers never went through the log


def test_a_failing_rank_stops_its_siblings(fake_repo, tmp_path):
    from azure.ai.ml import dsl

    make, rank_fail = fakes.load(fake_repo, "make"), fakes.load(fake_repo, "rank_fail")

    @dsl.pipeline(name="rank_failing")
    def pipeline(text):
        produced = make(text=text)
        node = rank_fail(data=produced.outputs.data)
        node.distribution = {"type": "pytorch", "process_count_per_instance": 2}

    with pytest.raises(StepFailed) as caught:
        run_pipeline(pipeline(text="x"), workdir=tmp_path, tracking_uri=None, run_id="r4", out=io.StringIO())
    assert (caught.value.step, caught.value.exit_code, caught.value.rank) == ("node", 5, 1)
    assert "rank 1 gives up" in caught.value.tail
    rank0_log = tmp_path / "runs" / "r4" / "node" / "logs" / "std_log_process_0.txt"
    assert "rank 0 finished" not in rank0_log.read_text()  # terminated, not waited for


SIGTERM_DRIVER = """
import sys
from pathlib import Path
from azure.ai.ml import dsl
from pipelines.local.processes import Terminated
from pipelines.local.runner import run_pipeline
from tests.pipelines import fakes

root, workdir, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
make, sleep = fakes.load(root, "make"), fakes.load(root, "sleep")

@dsl.pipeline(name="sleeping", experiment_name="fake-exp")
def pipeline(text):
    produced = make(text=text)
    node = sleep(data=produced.outputs.data)
    node.distribution = {"type": "pytorch", "process_count_per_instance": 2}

try:
    run_pipeline(pipeline(text="x"), workdir=workdir, tracking_uri=uri, run_id="rt")
except Terminated:
    sys.exit(143)
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its (new) parent.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.slow
def test_sigterm_ends_every_step_process_and_marks_the_runs_killed(fake_repo, tmp_path, empty_mlflow_db):
    """`timeout`, CI and schedulers send SIGTERM: no training process may outlive the runner."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from mlflow import MlflowClient

    from pipelines.definition.inputs import REPO_ROOT

    shutil.copy(empty_mlflow_db, tmp_path / "track.db")
    uri = f"sqlite:///{tmp_path / 'track.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    runner = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_DRIVER, str(fake_repo), str(tmp_path), uri], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    result = tmp_path / "runs" / "rt" / "node" / "outputs" / "result"
    deadline = time.monotonic() + 60
    while not all((result / f"pids_{rank}").is_file() for rank in (0, 1)):
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0]
        time.sleep(0.1)
    time.sleep(0.2)  # let the files be written whole
    pids = [int(pid) for rank in (0, 1) for pid in (result / f"pids_{rank}").read_text().split()]
    assert all(_alive(pid) for pid in pids)

    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=30)
    assert runner.returncode == 143, output
    assert not any(_alive(pid) for pid in pids), "a step process (or its child) outlived the runner"

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fake-exp").experiment_id])
    status = {run.info.run_name: run.info.status for run in runs}
    assert status == {"sleeping": "KILLED", "produced": "FINISHED", "node": "KILLED"}


@pytest.mark.slow
def test_kill_9_of_the_runner_ends_its_steps_and_the_next_run_marks_its_runs_killed(fake_repo, tmp_path,
                                                                                      empty_mlflow_db):
    """kill -9 cannot be caught: the step guard's parent-death signal ends the steps, and the next run finds
    the runs whose runner is gone (their maap.runner tag) and marks them KILLED."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from mlflow import MlflowClient

    from pipelines.definition.inputs import REPO_ROOT

    shutil.copy(empty_mlflow_db, tmp_path / "track.db")
    uri = f"sqlite:///{tmp_path / 'track.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    runner = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, str(fake_repo), str(tmp_path), uri], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = tmp_path / "runs" / "rt" / "node" / "outputs" / "result"
    deadline = time.monotonic() + 60
    while not all((result / f"pids_{rank}").is_file() for rank in (0, 1)):
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[0]
        time.sleep(0.1)
    time.sleep(0.2)
    pids = [int(pid) for rank in (0, 1) for pid in (result / f"pids_{rank}").read_text().split()]
    assert all(_alive(pid) for pid in pids)

    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a step process outlived the runner killed by SIGKILL"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fake-exp").experiment_id
    status = {run.info.run_name: run.info.status for run in client.search_runs([experiment])}
    assert status == {"sleeping": "RUNNING", "produced": "FINISHED", "node": "RUNNING"}  # nobody could end them

    out = io.StringIO()
    tracking = local_tracking.Tracking(uri, "fake-exp")
    live = tracking.start("live", {})  # a run of this (live) runner is left alone
    assert len(tracking.mark_orphaned_runs()) == 2
    status = {run.info.run_name: run.info.status for run in client.search_runs([experiment])}
    assert status == {"sleeping": "KILLED", "produced": "FINISHED", "node": "KILLED", "live": "RUNNING"}
    client.set_terminated(live, "FINISHED")
    run_pipeline(make_consume_job(fake_repo, processes=1), workdir=tmp_path / "next", tracking_uri=uri, out=out)
    assert "KILLED" not in out.getvalue()  # nothing left to mark


def test_submit_exits_143_on_sigterm_and_130_on_ctrl_c(monkeypatch, capsys):
    from pipelines import submit
    from pipelines.local.processes import Terminated

    for raised, code in ((Terminated(), 143), (KeyboardInterrupt(), 130)):
        def interrupted(args, raised=raised):
            raise raised

        monkeypatch.setattr(submit, "run_local", interrupted)
        assert submit.main(["--local"]) == code
        assert "marked KILLED" in capsys.readouterr().err


CREATE_STORE = """
import sys, time
import mlflow  # imported before the start line, so both racers reach the store together
from pipelines.local.tracking import Tracking
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(Tracking(sys.argv[1], "race").experiment_id)
"""


@pytest.mark.slow
def test_two_runs_creating_a_new_store_at_once_both_succeed(tmp_path):
    """Two `--local` runs started together in a fresh folder race to create and migrate mlruns.db."""
    import os
    import subprocess
    import time

    from pipelines.definition.inputs import REPO_ROOT

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    start = str(time.time() + 6)  # both past their imports, then both at once
    racers = [
        subprocess.Popen([sys.executable, "-c", CREATE_STORE, uri, start], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    ids = {output.strip().splitlines()[-1] for output in outputs}
    assert len(ids) == 1, outputs  # one experiment, not two half-created ones


def test_snapshot_refuses_an_include_that_clashes_or_is_missing(tmp_path):
    code = tmp_path / "comp"
    (code / "lib").mkdir(parents=True)
    other = tmp_path / "elsewhere" / "lib"
    other.mkdir(parents=True)
    step = StepPlan("s", "S", "python x.py", code, [other], {}, {}, {}, [])
    with pytest.raises(UserError, match="clashes"):
        local_step.snapshot_code(step, tmp_path / "snap1")
    step.includes = [tmp_path / "missing"]
    with pytest.raises(UserError, match="does not exist"):
        local_step.snapshot_code(step, tmp_path / "snap2")


def test_local_paths_only(fake_repo, tmp_path):
    from azure.ai.ml import Input, dsl

    consume = fakes.load(fake_repo, "consume")

    @dsl.pipeline(name="remote_input")
    def pipeline(data):
        consume(data=data)

    job = pipeline(data=Input(type="uri_folder", path="azureml://datastores/workspaceblobstore/paths/x"))
    with pytest.raises(UserError, match="local files and folders only"):
        run_pipeline(job, workdir=tmp_path, tracking_uri=None, out=io.StringIO())


def test_absolute_tracking_uri():
    base = Path("/work/here")
    assert local_tracking.absolute_tracking_uri("sqlite:///mlruns.db", base) == "sqlite:////work/here/mlruns.db"
    assert local_tracking.absolute_tracking_uri("sqlite:////abs/x.db", base) == "sqlite:////abs/x.db"
    assert local_tracking.absolute_tracking_uri("http://mlflow:5000", base) == "http://mlflow:5000"


def test_apply_local_profile_fills_only_what_the_user_left_unset():
    inputs, steps, applied = local_defaults.apply_local_profile(
        {"learning_rate": "0.1"}, {"evaluate": {"max_new_tokens": "8"}},
        {"learning_rate": 0.005, "epochs": 3, "evaluate.max_new_tokens": 16, "evaluate.sample_generations": 4},
    )
    assert inputs == {"learning_rate": "0.1", "epochs": 3}
    assert steps == {"evaluate": {"max_new_tokens": "8", "sample_generations": 4}}
    assert applied == {"epochs": 3, "evaluate.sample_generations": 4}


def test_ensure_tiny_model_builds_once_and_reuses(tmp_path, monkeypatch):
    calls = []

    def fake_build(path, seed=0):
        calls.append(Path(path))
        Path(path).mkdir(parents=True)
        (Path(path) / "config.json").write_text("{}")
        return Path(path)

    monkeypatch.setattr("maap_finetune.models.tiny.build_tiny_phi3", fake_build)
    first = local_defaults.ensure_tiny_model(tmp_path / "cache" / "tiny", out=io.StringIO())
    second = local_defaults.ensure_tiny_model(tmp_path / "cache" / "tiny", out=io.StringIO())
    assert first == second == (tmp_path / "cache" / "tiny").resolve()
    assert len(calls) == 1 and (first / "config.json").is_file()
    # A different seed is a different model: rebuilt.
    local_defaults.ensure_tiny_model(tmp_path / "cache" / "tiny", seed=1, out=io.StringIO())
    assert len(calls) == 2


def _store_with_model(tmp_path: Path, label: str, empty_db: Path) -> str:
    """A SQLite MLflow store whose registry holds models:/maap-finetuned/1, a folder saying `label`."""
    import shutil

    from mlflow import MlflowClient

    shutil.copy(empty_db, tmp_path / f"{label}.db")
    uri = f"sqlite:///{tmp_path / label}.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("register", artifact_location=str(tmp_path / f"{label}-artifacts"))
    run_id = client.create_run(experiment).info.run_id
    model = tmp_path / f"{label}-model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "which.txt").write_text(label)
    client.log_artifacts(run_id, str(model), "model")
    client.create_registered_model("maap-finetuned")
    assert client.create_model_version("maap-finetuned", f"runs:/{run_id}/model", run_id=run_id).version == 1
    return uri


def test_registered_model_folder_caches_each_store_apart(tmp_path, empty_mlflow_db, monkeypatch):
    """Two stores both hold models:/maap-finetuned/1; each resolves to its own model, also from the cache."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the store passed in decides, not the environment
        monkeypatch.delenv(name, raising=False)
    stores = {label: _store_with_model(tmp_path, label, empty_mlflow_db) for label in ("sft", "other")}
    cache = tmp_path / "registered"
    for _ in range(2):  # the second round comes from the cache
        folders = {label: local_defaults.registered_model_folder("models:/maap-finetuned/1", uri, cache)
                   for label, uri in stores.items()}
        assert {label: (folder / "which.txt").read_text() for label, folder in folders.items()} == {
            "sft": "sft", "other": "other"}
    assert len(list(cache.iterdir())) == 2
    # A relative sqlite URI names the same store as its absolute form, so it finds the same cache entry.
    assert local_defaults.registered_model_folder("models:/maap-finetuned/1", "sqlite:///sft.db", cache) == folders["sft"]
    with pytest.raises(UserError, match="models:/maap-finetuned/2: not in the MLflow registry at sqlite:///"):
        local_defaults.registered_model_folder("models:/maap-finetuned/2", stores["sft"], cache)


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs) to fill; needs root to mount (skipped otherwise, except under CI=true)."""
    import os
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


FILL_DISK = "python -c \"f = open('fill', 'wb')\nwhile True: f.write(b'x' * 65536); f.flush()\""


def test_a_full_disk_is_named_first_and_the_runners_bookkeeping_errors_follow_one_line_each(small_disk,
                                                                                         empty_mlflow_db):
    import shutil

    shutil.copy(empty_mlflow_db, small_disk / "track.db")
    code = small_disk / "code"
    code.mkdir()
    tracking = local_tracking.Tracking(f"sqlite:///{small_disk / 'track.db'}", "fill-exp")
    parent = tracking.start("pipeline", {})
    step = StepPlan("fill", "Fill", FILL_DISK, code, [], {}, {}, {}, [])
    with pytest.raises(StepFailed) as failed:
        local_step.run_step(step, small_disk / "runs" / "fill", {}, tracking=tracking, parent_run_id=parent, out=io.StringIO())
    lines = str(failed.value).splitlines()
    assert lines[0].startswith("step 'fill' failed with exit code 1: no space left on device: ")
    assert f"is on {small_disk}, which has" in lines[0]
    bookkeeping = [line for line in lines if line.startswith("runner bookkeeping: ")]
    assert bookkeeping and "disk is full" in bookkeeping[0]  # MLflow's SQLite store is on the full disk too
    assert lines[-len(bookkeeping):] == bookkeeping and "Traceback" not in str(failed.value)
