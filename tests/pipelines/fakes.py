"""Tiny fake components for the local runner's tests: plain Python scripts, no torch, fast.

Layout written under a temporary folder (the same shape as the repo):

    lib/fakelib/__init__.py         shared code, reached through additional_includes
    components/<name>/spec.yaml     command components
    components/<name>/<name>.py

Each script writes what it saw (argv, cwd, interpreter, environment) to its output folder, so the
tests assert on what the runner really did.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

FAKELIB = '''
import json, os, sys
from pathlib import Path

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
            "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "PYTHONPATH", "EXTRA_FOR_STEPS")


def record(folder, **extra):
    """Write what this process saw to <folder>/seen_<rank>.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen = {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "fakelib": __file__,
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        **extra,
    }
    (folder / f"seen_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))
'''

MAKE_PY = '''
import argparse
from pathlib import Path
import fakelib

parser = argparse.ArgumentParser()
parser.add_argument("--text", required=True)
parser.add_argument("--count", type=int, required=True)
parser.add_argument("--flag", required=True)
parser.add_argument("--suffix", default=None)
parser.add_argument("--data", required=True)
args = parser.parse_args()
out = Path(args.data)
print("made", args.text, flush=True)
(out / "value.txt").write_text(args.text * args.count + (args.suffix or ""))
fakelib.record(out, text=args.text, suffix=args.suffix, flag=args.flag)
'''

CONSUME_PY = '''
import argparse, os
from pathlib import Path
import fakelib

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--note", default=None)
parser.add_argument("--result", required=True)
args = parser.parse_args()
value = (Path(args.data) / "value.txt").read_text()
if os.environ.get("RANK", "0") == "0":
    (Path(args.result) / "copy.txt").write_text(value)
fakelib.record(args.result, note=args.note)
'''

TRACKED_PY = '''
import argparse
import mlflow
from pathlib import Path
import fakelib

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--result", required=True)
args = parser.parse_args()
with mlflow.start_run() as run:  # resumes MLFLOW_RUN_ID, as inside an Azure ML job
    mlflow.log_metric("answer", 42)
    fakelib.record(args.result, active_run_id=run.info.run_id)
'''

FAIL_PY = '''
import sys, time
print("loading things")
print("something went wrong: bad row 7", flush=True)
sys.exit(3)
'''

RANK_FAIL_PY = '''
import os, sys, time
from pathlib import Path
rank = int(os.environ["RANK"])
if rank == 1:
    print("rank 1 gives up", flush=True)
    sys.exit(5)
time.sleep(60)
print("rank 0 finished")
'''

SLEEP_PY = '''
import os, sys, time
from pathlib import Path
# A grandchild too: the runner must end the whole process group, not only the process it started.
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
Path(sys.argv[2], f"pids_{os.environ.get('RANK', '0')}").write_text(f"{os.getpid()} {child}")
time.sleep(120)
'''

PROGRESS_PY = '''
import json, os, sys, time
from pathlib import Path
import fakelib

# What a training step does: append progress records to the file the runner names.
for step in (1, 2, 3):
    with open(os.environ["MAAP_PROGRESS_FILE"], "a") as handle:
        handle.write(json.dumps({"step": step, "max_steps": 3, "start_step": 0, "elapsed_s": step * 0.5,
                                 "loss": 2.5 - step / 2, "tokens_per_second": 1000.0}) + "\\n")
    time.sleep(0.3)
fakelib.record(sys.argv[2])
'''

HEADER = """$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
type: command
version: 0.0.1
code: .
environment: azureml:fake-env:1
additional_includes:
  - ../../lib/fakelib
"""

SPECS = {
    "make": (
        MAKE_PY,
        """
        name: fake_make
        display_name: Make
        description: Writes a value.
        inputs:
          text: {type: string, description: Text to repeat.}
          count: {type: integer, default: 2, description: Repeats.}
          flag: {type: boolean, default: false, description: A boolean.}
          suffix: {type: string, optional: true, description: Appended when given.}
        outputs:
          data: {type: uri_folder, description: value.txt.}
        command: >-
          python make.py --text '${{inputs.text}}' --count ${{inputs.count}} --flag ${{inputs.flag}}
          $[[--suffix '${{inputs.suffix}}']] --data '${{outputs.data}}'
        """,
    ),
    "consume": (
        CONSUME_PY,
        """
        name: fake_consume
        display_name: Consume
        description: Copies the value; runs distributed.
        distribution:
          type: pytorch
        inputs:
          data: {type: uri_folder, description: Output of make.}
          note: {type: string, optional: true, description: Dropped when absent.}
        outputs:
          result: {type: uri_folder, description: copy.txt.}
        command: >-
          python consume.py --data '${{inputs.data}}' $[[--note '${{inputs.note}}']] --result '${{outputs.result}}'
        """,
    ),
    "tracked": (
        TRACKED_PY,
        """
        name: fake_tracked
        display_name: Tracked
        description: Logs to MLflow.
        inputs:
          data: {type: uri_folder, description: Anything; it orders the step.}
        outputs:
          result: {type: uri_folder, description: What it saw.}
        command: python tracked.py --data '${{inputs.data}}' --result '${{outputs.result}}'
        """,
    ),
    "fail": (
        FAIL_PY,
        """
        name: fake_fail
        display_name: Fail
        description: Exits 3.
        inputs:
          data: {type: uri_folder, description: Anything.}
        outputs:
          result: {type: uri_folder, description: Nothing.}
        command: python fail.py '${{inputs.data}}' '${{outputs.result}}'
        """,
    ),
    "progress": (
        PROGRESS_PY,
        """
        name: fake_progress
        display_name: Progress
        description: Reports progress as a training step does.
        inputs:
          data: {type: uri_folder, description: Anything.}
        outputs:
          result: {type: uri_folder, description: What it saw.}
        command: python progress.py '${{inputs.data}}' '${{outputs.result}}'
        """,
    ),
    "rank_fail": (
        RANK_FAIL_PY,
        """
        name: fake_rank_fail
        display_name: Rank Fail
        description: Rank 1 exits 5 while rank 0 waits.
        distribution:
          type: pytorch
        inputs:
          data: {type: uri_folder, description: Anything.}
        outputs:
          result: {type: uri_folder, description: Nothing.}
        command: python rank_fail.py '${{inputs.data}}' '${{outputs.result}}'
        """,
    ),
    "sleep": (
        SLEEP_PY,
        """
        name: fake_sleep
        display_name: Sleep
        description: Writes its pids, then sleeps as a long training step would.
        distribution:
          type: pytorch
        inputs:
          data: {type: uri_folder, description: Anything.}
        outputs:
          result: {type: uri_folder, description: pids_<rank>.}
        command: python sleep.py '${{inputs.data}}' '${{outputs.result}}'
        """,
    ),
}


def write_fake_repo(root: Path) -> Path:
    """Write the fake components under `root`; return `root`."""
    (root / "lib" / "fakelib").mkdir(parents=True)
    (root / "lib" / "fakelib" / "__init__.py").write_text(FAKELIB)
    for name, (script, spec) in SPECS.items():
        folder = root / "components" / name
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text(textwrap.dedent(script))
        (folder / "spec.yaml").write_text(HEADER + textwrap.dedent(spec).strip() + "\n")
    return root


def load(root: Path, name: str):
    from azure.ai.ml import load_component

    return load_component(source=root / "components" / name / "spec.yaml")
