"""The sweep flow: where to cut the backbone, and whether to fine-tune. The two embed runs
(pretrained and random weights, every stage) are subflows; each linear probe is a task;
the advice, its pictures and tables become a markdown artifact.

No logic lives here: each task is a plain function from ``transfer_pipe.steps.sweep``.
"""

from __future__ import annotations

from typing import Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.embed import run_embed
from flows.parameters import run_parameters
from flows.runs import RETRY, artifact_key, capture_library_logs, run_name, tagged
from transfer_pipe.config import SweepConfig, run_values
from transfer_pipe.curves import LayerScore
from transfer_pipe.steps import sweep as steps
from transfer_pipe.steps.checks import check_inputs
from transfer_pipe.steps.results import TrainSummary
from transfer_pipe.steps.target import run_config

capture_library_logs()


def _screen_name(parameters: dict[str, Any]) -> str:
    run: steps.ProbeRun = parameters["run"]
    return f"screen-{run.init}-{run.layer}"


def _probe_name(parameters: dict[str, Any]) -> str:
    run: steps.ProbeRun = parameters["run"]
    share = f"-{run.fraction:g}" if run.fraction < 1 else ""
    return f"probe-{run.init}-{run.layer}{share}"


check = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
prepare = task(name="prepare-sweep", cache_policy=NO_CACHE)(steps.prepare_sweep)
finalize = task(name="summarize", cache_policy=NO_CACHE, **RETRY)(steps.finalize_sweep)
screen = task(name="screen", cache_policy=NO_CACHE, task_run_name=_screen_name, **RETRY)(  # type: ignore[arg-type]
    steps.screen_layer
)


@task(name="probe", cache_policy=NO_CACHE, task_run_name=_probe_name, **RETRY)  # type: ignore[arg-type]
def probe(run: steps.ProbeRun, rows: steps.LayerRows) -> TrainSummary:
    """One linear probe (reused when the store holds it)."""
    return steps.fit_probe(run, rows)


@flow(name="sweep", log_prints=True, flow_run_name=run_name("backbone", "task"))
@run_parameters(SweepConfig)
def sweep_flow(**values: Any) -> State[steps.SweepSummary]:
    """Screen every stage of the backbone, pretrained and with random weights, probe where
    the screens say the choice is decided, then shares of the training labels at the best
    layer; advise where to cut and whether to fine-tune."""
    config = run_config(SweepConfig, values)  # a bad value fails here, as in the CLI
    clock, rows = steps.Stopwatch(), steps.LayerRows()  # rows: read once per layer
    with tagged("sweep"):
        check(config, embed_inputs=False)
        with clock.phase("prepare"):
            plan = prepare(config)
        keys, embedded = {}, 0
        for init in steps.INITS:
            with clock.phase(f"embed {init}"):
                done = run_embed(plan.embeds[init])
            keys[init], embedded = done.feature_set, embedded + done.embedded
        screens = []
        for run in steps.screen_runs(plan, keys):
            with clock.phase(f"screen {run.init}"), clock.phase(steps.probe_phase("screen", run)):
                screens.append(screen(run, rows))
        summaries: list[TrainSummary] = []
        depth: list[LayerScore] = []

        def run_probes(runs: list[steps.ProbeRun]) -> None:
            for run in runs:
                with clock.phase(f"depth {run.init}"), clock.phase(steps.probe_phase("depth", run)):
                    summaries.append(probe(run, rows))
                depth.append(steps.probe_layer(run, summaries[-1]))

        run_probes(steps.pretrained_runs(plan, keys, screens))
        # The baseline's probes depend on the pretrained peak: known once those ran.
        run_probes(steps.baseline_runs(plan, keys, screens, depth))
        curve = []
        for run in steps.curve_runs(plan, keys, depth):
            with clock.phase(f"curve {run.init}"), clock.phase(steps.probe_phase("curve", run)):
                summaries.append(probe(run, rows))
            curve.append(steps.share_point(run, summaries[-1]))
        summary: steps.SweepSummary = finalize(
            plan, keys, screens, depth, curve, summaries, embedded, clock.seconds
        )
        create_markdown_artifact(
            steps.sweep_report(summary, config.storage_options),
            key=artifact_key("sweep", plan.embeds["pretrained"].source, summary.task),
            description=f"where to cut {plan.embeds['pretrained'].backbone}: {summary.message}",
        )
    print(summary.message)
    return Completed(message=summary.message, data=summary)


def run_sweep(config: SweepConfig) -> steps.SweepSummary:
    """Run the sweep flow on a config (its flat parameters: ``config.run_values``)."""
    state = cast(State[steps.SweepSummary], sweep_flow(**run_values(config), return_state=True))
    summary: steps.SweepSummary = state.result()
    return summary
