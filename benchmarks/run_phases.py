"""Where a CLI embed run's time goes, cold and warm, against a running Prefect server.

The rerun target (a rerun on unchanged data under 2 % of the cold run) and the cold run's
start-up (the CLI against the raw forward pass) are both about what happens around the
shards, so this measures the parts of ``transfer-pipe embed`` one by one, in a fresh
process per run, as the CLI runs them (``transfer_pipe.app.cli._embed``):

- ``interpreter``: process start to the first line of Python;
- ``import_cli``: ``import transfer_pipe.app.cli``;
- ``check``: the run's config and every check before Prefect (backbone registry, the
  source listed and hashed, the store's status; the model built when the set is not yet
  complete);
- ``prefect_setup``: the running server found, Prefect's logging set up (Prefect imported);
- ``import_flow``: ``from flows.embed import embed_flow``;
- ``flow_start``: the flow call to Prefect's "Beginning flow run" (flow run created);
- ``flow_tasks``: its tasks (prepare, the shards, finalize);
- ``flow_end``: the last task to the flow's "Finished" (artifacts, Prefect's heartbeat
  thread stopped, final state);
- ``flow_return``: "Finished" to the call's return;
- ``exit``: the child's last line to the process's end (Prefect's workers drained,
  interpreter teardown).

Also ``manifest``: listing and hashing the source alone (part of ``check``), timed in a
fresh process of its own. Writes benchmarks/results/run_phases.json.

    .venv/bin/python benchmarks/run_phases.py [--limit N] [--image-size 64] [--warm-runs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transfer_pipe.app.cli import add_options
from transfer_pipe.config import EmbedConfig, with_defaults

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "run_phases.json"
PHASES = (
    "interpreter",
    "import_cli",
    "check",
    "prefect_setup",
    "import_flow",
    "flow_start",
    "flow_tasks",
    "flow_end",
    "flow_return",
    "exit",
)


class _FlowMarks(logging.Handler):
    """Times of Prefect's own INFO lines: the flow's start, each task's end, its end."""

    def __init__(self) -> None:
        super().__init__()
        self.begin: float | None = None
        self.last_task: float | None = None
        self.finished: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "prefect.flow_runs" and message.startswith("Beginning flow run"):
            self.begin = record.created
        elif record.name == "prefect.task_runs" and message.startswith("Finished in state"):
            self.last_task = record.created
        elif record.name == "prefect.flow_runs" and message.startswith("Finished in state"):
            self.finished = record.created


def child(argv: list[str]) -> None:
    """One CLI embed run, part by part; prints its timestamps as one JSON line."""
    marks: dict[str, float] = {"python": time.time()}
    import transfer_pipe.app.cli as cli

    marks["import_cli"] = time.time()
    from transfer_pipe.config import EmbedConfig
    from transfer_pipe.steps.checks import check_inputs
    from transfer_pipe.steps.target import run_config

    args = cli.build_parser().parse_args(["embed", *argv])
    values = cli.run_values_from(EmbedConfig, args)
    config = run_config(EmbedConfig, values)
    check_inputs(config)
    marks["check"] = time.time()
    cli.prepare_prefect()
    flow_marks = _FlowMarks()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addHandler(flow_marks)
    marks["prefect_setup"] = time.time()
    from flows.embed import embed_flow

    marks["import_flow"] = time.time()
    summary = embed_flow(**values)
    marks["flow_return"] = time.time()
    if flow_marks.begin is None or flow_marks.last_task is None or flow_marks.finished is None:
        raise SystemExit("Prefect's flow and task lines were not seen")
    marks.update(
        flow_start=flow_marks.begin, flow_tasks=flow_marks.last_task, flow_end=flow_marks.finished
    )
    print(json.dumps({"marks": marks, "embedded": summary.embedded}))
    sys.stdout.flush()
    marks["done"] = time.time()
    print(json.dumps({"done": marks["done"]}), flush=True)


def run(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One child run: seconds per phase (see the module docstring)."""
    started = time.time()
    process = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    ended = time.time()
    if process.returncode != 0:
        raise SystemExit(f"the run failed:\n{process.stderr[-3000:]}")
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    record, done = lines[-2], lines[-1]["done"]
    marks = record["marks"]
    order = [
        ("interpreter", started, marks["python"]),
        ("import_cli", marks["python"], marks["import_cli"]),
        ("check", marks["import_cli"], marks["check"]),
        ("prefect_setup", marks["check"], marks["prefect_setup"]),
        ("import_flow", marks["prefect_setup"], marks["import_flow"]),
        ("flow_start", marks["import_flow"], marks["flow_start"]),
        ("flow_tasks", marks["flow_start"], marks["flow_tasks"]),
        ("flow_end", marks["flow_tasks"], marks["flow_end"]),
        ("flow_return", marks["flow_end"], marks["flow_return"]),
        ("exit", done, ended),
    ]
    phases = {name: round(end - begin, 3) for name, begin, end in order}
    return {"wall_s": round(ended - started, 3), "phases_s": phases, "embedded": record["embedded"]}


def manifest_seconds(limit: int | None) -> float:
    """Seconds to list and hash the source, in a fresh process (no in-process caches)."""
    code = (
        "import time; from transfer_pipe.data.sources import load_manifest; "
        "t = time.perf_counter(); "
        f"load_manifest('fashion-mnist').limit({limit!r}); "
        "print(time.perf_counter() - t)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return round(float(output.strip().splitlines()[-1]), 3)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    from embed_throughput import start_prefect_server

    parser = argparse.ArgumentParser(description=__doc__)
    # No --limit: all 70,000 images.
    add_options(parser, with_defaults(EmbedConfig, ("limit", "image_size"), image_size=64))
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="run-phases-"))
    server, api = start_prefect_server(work / "server")
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_URL": api}
    argv = ["fashion-mnist", "--store", str(work / "store"), "--image-size", str(args.image_size)]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    try:
        cold = run(argv, env)
        print("cold", json.dumps(cold), flush=True)
        warm = []
        for _ in range(args.warm_runs):
            time.sleep(10)  # the server writes the run before's events meanwhile
            warm.append(run(argv, env))
            print("warm", json.dumps(warm[-1]), flush=True)
    finally:
        server.terminate()
        server.wait()
    median = {
        name: round(statistics.median(w["phases_s"][name] for w in warm), 3) for name in PHASES
    }
    warm_wall = statistics.median(w["wall_s"] for w in warm)
    outside_flow = ("interpreter", "import_cli", "prefect_setup", "import_flow", "exit")
    result = {
        "benchmark": "run_phases",
        "source": "fashion-mnist",
        "images": args.limit or 70_000,
        "image_size": args.image_size,
        "cold": cold,
        "warm_runs": warm,
        "warm_median_phases_s": median,
        "warm_median_wall_s": round(warm_wall, 3),
        "ratio_warm_vs_cold": round(warm_wall / cold["wall_s"], 4),
        "warm_process_and_imports_s": round(sum(median[name] for name in outside_flow), 3),
        "manifest_s": manifest_seconds(args.limit),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
