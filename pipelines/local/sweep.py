"""Run a pipeline's sweep node on this machine, as Azure ML runs it.

`runner.run_pipeline` hands a sweep node here. Each trial is the node's trial component run by
`step.run_step` (same snapshot, textual substitution and `bash -c`) with its hyperparameters as
input values, under `<run>/<node>/trials/trial_<n>/`:
- sampling: grid (every combination, in order) and random (seeded when the sweep says so) as
  `policy.sample_trials` draws them; bayesian falls back to random, with a printed note;
- concurrency: max_concurrent_trials (Azure ML's default: all at once), capped by this machine's cores
  divided by the trial's processes; trials side by side print no live progress line;
- MLflow: the pipeline run -> the sweep run (the node, tagged maap.sweep) -> one child run per trial;
- early termination: each running trial's primary metric history is read from its MLflow run (what Azure
  ML's service reads) and `policy.should_stop` decides; a stopped trial's processes are ended and its
  run marked KILLED with the reason (tag maap.stop_reason);
- time limits: a trial running longer than limits.trial_timeout is stopped the same way ("trial_timeout <n> s
  reached"); once the sweep has run limits.timeout seconds its running trials are stopped ("sweep timeout <n> s
  reached") and no queued trial starts (status skipped). A stopped trial is never the best one (its outputs are
  unfinished); when no trial completed, the step fails naming the limit that ended them;
- the best trial: the completed trial with the best value of the primary metric it logged (Azure ML ranks a
  trial by its best logged value); its outputs are the node's, so downstream steps read them;
- the summary (trials x hyperparameters x primary metric, best first, with why each trial ended) goes to
  `<run>/<node>/sweep/` (summary.md, summary.json, summary.png) and to the sweep run's artifacts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from pipelines.local import policy as sweep_policy
from pipelines.local.plan import Binding, StepPlan, StepResult
from pipelines.local.step import StepFailed, run_step, tail
from pipelines.local.tracking import Tracking, run_status

POLL_S = 1.0  # how often a running trial's metrics are read for early termination


class TrialStopped(Exception):
    """The early-termination policy or a time limit stopped a trial."""


@dataclasses.dataclass
class Trial:
    index: int
    params: dict[str, Any]
    status: str = "queued"  # queued | running | completed | stopped | failed | skipped (not started: sweep timeout)
    run_id: str | None = None
    started: float | None = None  # time.monotonic() when it started
    limit: str | None = None  # the limit that stopped or skipped it: "trial_timeout" | "timeout"
    result: StepResult | None = None
    metric: float | None = None
    seconds: float = 0.0
    note: str = ""


class _TrialTracking:
    """The runner's tracking with the trial's run name and tags, remembering the run it creates."""

    def __init__(self, tracking: Tracking, trial: Trial, tags: Mapping[str, str]):
        self._tracking, self._trial, self._tags = tracking, trial, dict(tags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracking, name)

    def start(self, name: str, tags: Mapping[str, str]) -> str:
        self._trial.run_id = self._tracking.start(f"trial_{self._trial.index}", {**tags, **self._tags})
        return self._trial.run_id


class _Monitor:
    """Applies the time limits and the early-termination policy (from MLflow metric histories) to running trials."""

    def __init__(self, tracking: Tracking | None, metric: str, goal: str, policy: Mapping[str, Any] | None,
                 trials: list[Trial], cancel: threading.Event, *, timeout: int | None = None,
                 trial_timeout: int | None = None, start: float = 0.0):
        self.tracking, self.metric, self.goal, self.policy = tracking, metric, goal, policy
        self.trials, self.cancel = trials, cancel
        self.timeout, self.trial_timeout, self.start = timeout, trial_timeout, start
        self.lock = threading.Lock()
        self.evaluated: dict[int, int] = {}
        self.last_read: dict[int, float] = {}

    def sweep_timed_out(self) -> str | None:
        """The reason when the sweep has run limits.timeout seconds; None before (or without a timeout)."""
        if self.timeout and time.monotonic() - self.start >= self.timeout:
            return f"sweep timeout {self.timeout} s reached"
        return None

    def limit_reached(self, trial: Trial) -> tuple[str, str] | None:
        """(limit, reason) when a time limit ends the running `trial`; None otherwise."""
        if self.trial_timeout and trial.started is not None and time.monotonic() - trial.started >= self.trial_timeout:
            return "trial_timeout", f"trial_timeout {self.trial_timeout} s reached"
        reason = self.sweep_timed_out()
        return ("timeout", reason) if reason else None

    def history(self, trial: Trial) -> list[float]:
        if self.tracking is None or trial.run_id is None:
            return []
        entries = self.tracking.client.get_metric_history(trial.run_id, self.metric)
        return [m.value for m in sorted(entries, key=lambda m: (m.step, m.timestamp))]

    def stop_check(self, trial: Trial):
        def check() -> None:
            if self.cancel.is_set():
                raise KeyboardInterrupt  # Ctrl-C or SIGTERM reached the runner: end this trial too
            reached = self.limit_reached(trial)
            if reached:
                trial.limit, trial.note = reached
                raise TrialStopped(trial.note)
            now = time.monotonic()
            if self.policy is None or now - self.last_read.get(trial.index, 0.0) < POLL_S:
                return
            self.last_read[trial.index] = now
            with self.lock:
                own = self.history(trial)
                others = [self.history(t) for t in self.trials if t is not trial and t.run_id]
                for interval in range(self.evaluated.get(trial.index, 0) + 1, len(own) + 1):
                    self.evaluated[trial.index] = interval
                    reason = sweep_policy.should_stop(self.policy, self.goal, own, others, interval)
                    if reason:
                        trial.note = reason
                        raise TrialStopped(reason)

        return check


def _policy_dict(policy) -> dict[str, Any] | None:
    if policy is None:
        return None
    kind = {"BanditPolicy": "bandit", "MedianStoppingPolicy": "median_stopping"}.get(type(policy).__name__)
    if kind is None:
        from maap_finetune.common.errors import UserError

        raise UserError(f"the local runner reproduces bandit and median_stopping policies, not {type(policy).__name__}")
    keys = ("slack_factor", "slack_amount", "evaluation_interval", "delay_evaluation")
    return {"type": kind, **{k: getattr(policy, k) for k in keys if getattr(policy, k, None) is not None}}


def _space(node) -> dict[str, dict[str, Any]]:
    """The node's search space as plain dicts ({"type": "choice", "values": [...]}, ...)."""
    space = {}
    for name, dist in (node.search_space or {}).items():
        fields = {k: v for k, v in vars(dist).items() if not k.startswith("_") and v is not None}
        space[name] = {"type": str(fields.pop("type")).lower(), **fields}
    return space


def _sampling(node) -> tuple[str, int | None]:
    algorithm = node.sampling_algorithm
    if isinstance(algorithm, str):
        return algorithm.lower(), None
    return str(algorithm.type).lower(), getattr(algorithm, "seed", None)


def run_sweep_step(step: StepPlan, step_dir: Path, results: Mapping[str, StepResult], *, tracking: Tracking | None = None,
                   parent_run_id: str | None = None, out: TextIO = sys.stdout, stream: bool = False, label: str = "",
                   env: Mapping[str, str] | None = None) -> StepResult:
    """Run the sweep node `step` (step.sweep is the SDK's Sweep node); return the best trial's outputs as its own."""
    start = time.monotonic()
    node = step.sweep
    space = _space(node)
    algorithm, seed = _sampling(node)
    metric, goal = node.objective.primary_metric, str(node.objective.goal).lower()
    limits = node.limits
    total, timeout, trial_timeout = limits.max_total_trials, limits.timeout, limits.trial_timeout
    policy = _policy_dict(node.early_termination)
    if algorithm == "bayesian":
        print(f"{label}{step.name}: note: bayesian sampling runs in Azure ML only; locally the trials are sampled "
              "at random", file=out, flush=True)
        algorithm = "random"
    if algorithm == "random" and seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    trials = [Trial(i, params) for i, params in enumerate(sweep_policy.sample_trials(space, algorithm, total, seed), 1)]
    world = step.process_count * step.instance_count
    concurrency = max(1, min(limits.max_concurrent_trials or len(trials), (os.cpu_count() or 1) // world, len(trials)))
    seed_note = f", seed {seed}" if algorithm == "random" else ""
    time_limits = ", ".join(f"{name} {value} s" for name, value in (("timeout", timeout), ("trial_timeout", trial_timeout)) if value)
    print(f"{label}{step.name}: sweep of {len(trials)} trials ({algorithm}{seed_note}), {concurrency} at a time; "
          f"primary metric {metric} ({goal})" + (f"; early termination: {policy}" if policy else "")
          + (f"; limits: {time_limits}" if time_limits else ""), file=out, flush=True)

    sweep_run_id = _start_sweep_run(tracking, step, parent_run_id, {
        "sampling_algorithm": algorithm, "seed": seed, "primary_metric": metric, "goal": goal, "max_total_trials": total,
        "max_concurrent_trials": concurrency, "timeout": timeout, "trial_timeout": trial_timeout,
        "early_termination": json.dumps(policy) if policy else None, "search_space": json.dumps(space)})
    cancel = threading.Event()
    monitor = _Monitor(tracking, metric, goal, policy, trials, cancel, timeout=timeout, trial_timeout=trial_timeout, start=start)
    ok, error = False, None
    try:
        _run_trials(step, step_dir, results, trials, concurrency, monitor, tracking, sweep_run_id, out, stream, label, env)
        best = _best_trial(trials, goal)
        summary = write_summary(step_dir / "sweep", trials, metric, goal, best)
        if tracking is not None:
            tracking.client.log_artifacts(sweep_run_id, str(summary), artifact_path="sweep")
        if best is None:
            last = next((t for t in reversed(trials) if t.status in ("failed", "stopped")), trials[-1])
            log = step_dir / "trials" / f"trial_{last.index}" / "logs" / "std_log.txt"
            raise StepFailed(f"{step.name} (sweep: no trial completed with {metric}{_limits_note(trials)}; "
                             f"summary: {summary / 'summary.md'})", 1, log, tail(log))
        if tracking is not None:
            _record_best(tracking, sweep_run_id, metric, best)
        ok = True
    except BaseException as err:
        error = err
        cancel.set()
        raise
    finally:
        if tracking is not None and sweep_run_id:
            tracking.finish(sweep_run_id, run_status(ok, error))
    seconds = time.monotonic() - start
    print(f"{label}{step.name}: best trial_{best.index} ({_format(best.params)}): {metric} {best.metric:.4f}; "
          f"summary: {summary / 'summary.md'}; done in {seconds:.1f} s", file=out, flush=True)
    return StepResult(step.name, seconds, best.result.outputs, best.result.log_paths, sweep_run_id)


def _start_sweep_run(tracking: Tracking | None, step: StepPlan, parent_run_id: str | None,
                     params: Mapping[str, Any]) -> str | None:
    """The node's sweep run (a child of the pipeline's, tagged maap.sweep) with the sweep's settings as params."""
    if tracking is None:
        return None
    tags = {"mlflow.parentRunId": parent_run_id or "", "maap.step": step.name, "maap.display_name": step.display_name,
            "maap.sweep": "true"}
    sweep_run_id = tracking.start(step.name, {k: v for k, v in tags.items() if v})
    tracking.log_params(sweep_run_id, params)
    return sweep_run_id


def _record_best(tracking: Tracking, sweep_run_id: str, metric: str, best: Trial) -> None:
    client = tracking.client
    client.log_metric(sweep_run_id, metric, best.metric)
    tracking.log_params(sweep_run_id, {f"best.{k}": v for k, v in best.params.items()})
    client.set_tag(sweep_run_id, "maap.best_trial", f"trial_{best.index}")
    client.set_tag(sweep_run_id, "maap.best_trial_run_id", best.run_id or "")


def _limits_note(trials: list[Trial]) -> str:
    """Which time limits ended trials, and how to give them more time ("" when none did)."""
    ended = {}
    for trial in trials:
        if trial.limit:
            ended.setdefault(trial.limit, (trial.note.removeprefix("not started: "), []))[1].append(f"trial_{trial.index}")
    return "".join(f"; {reason} (ended {', '.join(names)}): raise limits.{limit} in the sweep file or with "
                   f"--sweep-limit {limit}=N" for limit, (reason, names) in ended.items())


def _format(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _run_trials(step, step_dir, results, trials, concurrency, monitor, tracking, sweep_run_id, out, stream, label, env):
    def run_one(trial: Trial) -> None:
        plan = dataclasses.replace(
            step, name=f"trial_{trial.index}", sweep=None,
            bindings={**step.bindings, **{k: Binding("value", v) for k, v in trial.params.items()}},
        )
        trial_tracking = None
        if tracking is not None:
            trial_tracking = _TrialTracking(tracking, trial, {"mlflow.parentRunId": sweep_run_id, "maap.sweep_trial": str(trial.index)})
        timed_out = monitor.sweep_timed_out()
        if timed_out:  # as Azure ML, no trial starts once the sweep's time is up
            trial.status, trial.limit, trial.note = "skipped", "timeout", f"not started: {timed_out}"
            print(f"{label}{step.name} trial_{trial.index}: {trial.note}", file=out, flush=True)
            return
        print(f"{label}{step.name} trial_{trial.index}: {_format(trial.params)}", file=out, flush=True)
        trial.status = "running"
        trial.started = started = time.monotonic()
        try:
            trial.result = run_step(plan, step_dir / "trials" / plan.name, results, tracking=trial_tracking,
                                    parent_run_id=sweep_run_id, out=out, stream=stream and concurrency == 1,
                                    label=f"{label}{step.name} ", env=env, stop=monitor.stop_check(trial),
                                    live_progress=concurrency == 1)
            history = monitor.history(trial)
            trial.metric = sweep_policy.best_value(history, monitor.goal) if history else None
            trial.status = "completed" if trial.metric is not None else "failed"
            if trial.metric is None:
                trial.note = f"logged no {monitor.metric}"
        except TrialStopped as stopped:
            trial.status = "stopped"
            history = monitor.history(trial)
            trial.metric = sweep_policy.best_value(history, monitor.goal) if history else None
            print(f"{label}{step.name} trial_{trial.index}: stopped early: {stopped}", file=out, flush=True)
            if tracking is not None and trial.run_id:
                tracking.client.set_tag(trial.run_id, "maap.stop_reason", str(stopped))
                tracking.finish(trial.run_id, "KILLED")
        except StepFailed as failed:  # as in Azure ML, a failed trial does not end the sweep
            trial.status, trial.note = "failed", f"exit code {failed.exit_code}; log: {failed.log_path}"
            print(f"{label}{step.name} trial_{trial.index}: failed ({trial.note})", file=out, flush=True)
        finally:
            trial.seconds = time.monotonic() - started

    if concurrency == 1:
        for trial in trials:
            run_one(trial)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(run_one, trial) for trial in trials]
        try:
            pending = set(futures)
            while pending:  # a timed wait keeps the main thread responsive to Ctrl-C and SIGTERM
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                for future in done:
                    future.result()
        except BaseException:
            monitor.cancel.set()  # every running trial's stop check raises; queued ones are dropped
            for future in futures:
                future.cancel()
            raise


def _best_trial(trials: list[Trial], goal: str) -> Trial | None:
    completed = [t for t in trials if t.status == "completed" and t.metric is not None]
    if not completed:
        return None
    return min(completed, key=lambda t: t.metric if goal == "minimize" else -t.metric)


def _ranked(trials: list[Trial], goal: str) -> list[Trial]:
    order = {"completed": 0, "stopped": 1, "failed": 2, "skipped": 3, "queued": 3, "running": 3}
    sign = 1 if goal == "minimize" else -1
    return sorted(trials, key=lambda t: (order[t.status], t.metric is None, sign * (t.metric or 0.0), t.index))


def write_summary(folder: Path, trials: list[Trial], metric: str, goal: str, best: Trial | None) -> Path:
    """summary.json, summary.md and summary.png: trials x hyperparameters x primary metric, best first, with why
    each trial ended (note); `best` None when no trial completed."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(trials[0].params) if trials else []
    ranked = _ranked(trials, goal)
    rows = [{"rank": rank, "trial": f"trial_{t.index}", "status": t.status, **t.params, metric: t.metric,
             "seconds": round(t.seconds, 1), "mlflow_run_id": t.run_id, "note": t.note}
            for rank, t in enumerate(ranked, 1)]
    best_name = f"trial_{best.index}" if best else None
    (folder / "summary.json").write_text(json.dumps({"primary_metric": metric, "goal": goal, "best_trial": best_name,
                                                     "trials": rows}, indent=2) + "\n", encoding="utf-8")
    header = ["rank", "trial", "status", *names, metric, "seconds", "note"]

    def cell(value: Any) -> str:
        text = f"{value:.6g}" if isinstance(value, float) else ("" if value is None else str(value))
        return text.replace("|", "\\|")

    lines = [f"# Sweep: {metric} ({goal}), " + (f"best {best_name}" if best else "no trial completed"), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in header) + " |" for row in rows]
    (folder / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(folder / "summary.png", ranked, metric, best)
    return folder


def _plot(path: Path, ranked: list[Trial], metric: str, best: Trial | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in ranked if t.metric is not None]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * max(1, len(shown))))
    labels = [f"trial_{t.index}: {_format(t.params)}" + ("" if t.status == "completed" else f" ({t.status})") for t in shown]
    colors = ["tab:green" if t is best else ("tab:gray" if t.status != "completed" else "tab:blue") for t in shown]
    ax.barh(range(len(shown)), [t.metric for t in shown], color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()  # best first, at the top
    for i, t in enumerate(shown):
        ax.text(t.metric, i, f" {t.metric:.4f}", va="center", fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(f"Sweep trials by {metric} (best in green)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
