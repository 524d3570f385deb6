"""The `autoresearch` command line (Typer for parsing, Rich for output)."""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

import prepare
from app import deployments, pool_status
from flows.research import ConfigMismatch, research
from infra import display, operator_files, prefect_ui, settings
from infra.experiment_config import (
    ExperimentConfig,
    explain,
    fixed_setting_changes,
)
from infra.pool.protocol import local_fingerprints
from infra.pool.worker_setup import WorkerSetup
from infra.prefect_server import (
    credentials,
    healthy,
    point_prefect_at,
    prefect_api,
    recorded_server,
)
from infra.proposers import ProposerError, resolve_spec
from infra.proposers.search_space import SpaceError, search_space
from infra.records import IterationRecord, MeasuredRun, Status, incumbent_of
from infra.report_html import report_for
from infra.research.acceptance_rule import RuleConfig
from infra.research.lock import LockHeld, database_holder, lock_holder
from infra.research.program import ProgramError, read_program
from infra.sandbox.allowances import measure_allowances
from infra.sandbox.compute_record import describe
from infra.sandbox.slots import SlotError, default_slot_count, plan_slots
from infra.sandbox.trial import run_trial
from infra.store import Store, StoreError, results_db_url
from infra.store.store import display_url, make_engine, schema_revision
from infra.store.worker_role import worker_grants

app = typer.Typer(help="Autoresearch for Fashion-MNIST.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The results store: its schema.", no_args_is_help=True, add_completion=False)
app.add_typer(db_app, name="db")
err = Console(stderr=True)
# piped or redirected output is read later, not in an 80-column terminal: don't fold it
out = Console() if Console().is_terminal else Console(width=160)


@app.callback()
def root() -> None:
    """Autoresearch for Fashion-MNIST: sandboxed training, scoring no candidate can fake."""
    operator_files.private_umask()  # everything we make is the operator's alone, whatever the caller's umask


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def home_of(home: Optional[Path]) -> Path:
    """The runs home (--home, AUTORESEARCH_HOME or ./runs), made or checked to be the operator's alone (0700)."""
    try:
        return operator_files.operator_dir(settings.runs_home(home))
    except operator_files.ForeignPath as exc:
        fail(f"runs home: {exc}", code=1)
        raise  # unreachable: fail raises


def check_device(device: Optional[str]) -> None:
    """Validate --device (or prepare.DEVICE_ENV) before anything starts."""

    if device:
        os.environ[prepare.DEVICE_ENV] = device
    try:
        prepare.get_device()
    except ValueError as exc:
        fail(str(exc))


def check_data() -> None:

    try:
        prepare.ensure_data()
    except prepare.DataUnavailable as exc:
        fail(str(exc), code=1)


def make_limits(
    budget: float,
    export_allowance: Optional[float],
    startup_allowance: Optional[float],
    inference_allowance: float,
    memory_cap_gb: Optional[float],
    cpu_threads: Optional[int],
) -> settings.Limits:
    """The limits, checked before anything starts (an unset allowance is checked as 0 here, then measured)."""
    if memory_cap_gb is not None and memory_cap_gb <= 0:
        fail(f"--memory-cap-gb must be positive, got {memory_cap_gb}")
    if cpu_threads is not None and cpu_threads < 1:
        fail(f"--cpu-threads must be at least 1, got {cpu_threads}")
    try:
        return settings.Limits(
            budget_s=budget,
            startup_allowance_s=startup_allowance or 0.0,
            export_allowance_s=export_allowance or 0.0,
            inference_allowance_s=inference_allowance,
            memory_cap_bytes=int(memory_cap_gb * 2**30) if memory_cap_gb else 0,
            cpu_threads=cpu_threads or 0,
        )
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail raises


def with_progress(label: str, budget: float, work, quiet: bool):
    """Run work(on_line) in a thread while a bar shows training time against the budget."""
    if quiet:
        return work(None)
    box: dict = {}
    # the last line is the candidate's output: shown as text, never as Rich markup
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[last]}", markup=False),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=budget, last="starting")
        started: dict[str, float] = {}

        def on_line(line: str) -> None:
            if line.startswith(prepare.BUDGET_MARKER):
                started["t"] = time.monotonic()
            progress.update(task, last=line[:60])

        thread = threading.Thread(target=lambda: box.update(result=work(on_line)), daemon=True)
        thread.start()
        while thread.is_alive():
            if "t" in started:
                progress.update(task, completed=min(budget, time.monotonic() - started["t"]))
            thread.join(0.2)
    return box["result"]


@app.command()
def train(
    path: Path = typer.Argument(..., help="the candidate train.py"),
    budget: float = typer.Option(..., "--budget", help="training budget in seconds"),
    seed: int = typer.Option(0, "--seed", help="AUTORESEARCH_SEED for the candidate"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: best available)"),
    export_allowance: Optional[float] = typer.Option(
        None,
        "--export-allowance",
        help="seconds after the deadline to save the model before SIGKILL (default: measured)",
    ),
    startup_allowance: Optional[float] = typer.Option(
        None, "--startup-allowance", help="seconds for imports and data loading before the budget (default: measured)"
    ),
    inference_allowance: float = typer.Option(
        settings.DEFAULT_INFERENCE_ALLOWANCE_S,
        "--inference-allowance",
        help="CPU seconds on one core per 10,000 images the model may spend at evaluation",
    ),
    memory_cap_gb: Optional[float] = typer.Option(None, "--memory-cap-gb", help="memory cap (default: half of RAM)"),
    cpu_threads: Optional[int] = typer.Option(
        None, "--cpu-threads", help="cores allotted to a CPU run; its budget is CPU time of these cores (default 1)"
    ),
    home: Optional[Path] = typer.Option(None, "--home", help="runs directory (default: AUTORESEARCH_HOME or ./runs)"),
) -> None:
    """Train one candidate in the sandbox and score it on the validation split."""
    if not path.is_file():
        fail(f"no such file: {path}")
    limits = make_limits(budget, export_allowance, startup_allowance, inference_allowance, memory_cap_gb, cpu_threads)
    check_device(device)
    check_data()

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = operator_files.operator_dir(home_of(home) / "scratch") / f"{stamp}-{path.stem}"
    code = path.read_text()
    if startup_allowance is None or export_allowance is None:
        try:
            measured = measure_allowances(
                run_dir.with_name(run_dir.name + "-allowance-probe"),
                device,
                limits.memory_cap_bytes,
                limits.cpu_threads,
            )
        except RuntimeError as exc:
            fail(f"cannot measure the allowances: {exc}", code=1)
        limits = replace(
            limits,
            startup_allowance_s=startup_allowance if startup_allowance is not None else measured.startup_s,
            export_allowance_s=export_allowance if export_allowance is not None else measured.export_s,
        )
        if not json_out:
            out.print(
                f"allowances: start-up {limits.startup_allowance_s:g} s, export {limits.export_allowance_s:g} s "
                f"(measured in the sandbox where not given)"
            )
    result = with_progress(
        f"training {path.name}",
        budget,
        lambda on_line: run_trial(code, run_dir, limits, seed=seed, device=device, on_line=on_line),
        quiet=json_out,
    )
    if json_out:
        print(result.to_json())
        return
    table = Table(show_header=False, box=None)
    for key in (
        "status",
        "reason",
        "val_accuracy",
        "val_loss",
        "epochs",
        "train_seconds",
        "inference_seconds",
        "wall_seconds",
    ):
        value = getattr(result, key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else escape(str(value)))
    table.add_row("compute", describe(result.compute))
    table.add_row("peak_memory", f"{result.peak_memory_bytes / 2**20:.0f} MiB")
    table.add_row("isolated", "bubblewrap" if result.isolated else "no (bubblewrap missing)")
    table.add_row("log", escape(result.log_path))
    out.print(table)


def check_name(name: str) -> None:
    problem = settings.name_problem(name)
    if problem:
        fail(problem)


def open_store(db: Optional[str], home: Path, upgrade: Optional[bool] = None) -> Store:
    """The results store (infra/store); upgrade=True for the coordinator, which migrates it (Store's docstring)."""
    url = results_db_url(home, db)
    try:
        return Store(url, upgrade=upgrade)
    except StoreError as exc:
        fail(str(exc))


# run's options are ExperimentConfig's fields (infra/experiment_config.py): its defaults, its checks
OPTION_OF_FIELD = {
    "name": "--experiment",
    "budget_s": "--budget",
    "export_allowance_s": "--export-allowance",
    "inference_allowance_s": "--inference-allowance",
    "db_url": "--db",
    "startup_allowance_s": "--startup-allowance",
    "program_path": "--program",
    "baseline_path": "--baseline",
    "stop_after_s": "--hours",
    "stop_at": "--until",
    "devices": "--devices",
    "pool": "--pool",
    "local_slots": "--local-slots",
}


def experiment_config(
    proposer: str,
    max_runs: Optional[int] = None,
    devices: Optional[str] = None,
    sampler: Optional[str] = None,
    **fields: Any,
) -> tuple[ExperimentConfig, str]:
    """run's and deploy's options as the experiment's configuration, and why this proposer; bad input exits 2.
    fields are ExperimentConfig's, by name. `auto` on an experiment that exists means the proposer it runs with (a
    fixed setting). --sampler names optuna's sampler: `--proposer optuna --sampler cmaes` is `optuna:cmaes`."""
    check_name(fields["name"])
    if sampler is not None:
        if proposer.partition(":")[0] != "optuna" or ":" in proposer:
            fail(f"--sampler goes with --proposer optuna (got --proposer {proposer})")
        proposer = f"optuna:{sampler}"
    home_dir = home_of(fields.pop("home", None))
    stored = open_store(fields.get("db_url"), home_dir, upgrade=True).experiment(fields["name"])  # the coordinator
    try:
        if proposer == "auto" and stored is not None and stored.config.get("proposer"):
            spec, _ = resolve_spec(stored.config["proposer"])
            why = f"auto: experiment {fields['name']!r} runs with proposer {spec}"
        else:
            spec, why = resolve_spec(proposer)
    except ProposerError as exc:
        fail(str(exc))
    if fields.get("pool") is None and stored is not None:  # an experiment on a pool goes on there (a fixed setting)
        fields["pool"] = stored.config.get("pool")
    rule = dict(stored.config.get("rule") or {}) if stored is not None else {}  # the rule is the experiment's...
    if max_runs is not None:  # ...unless asked otherwise (a resumed experiment: with --change-rule)
        rule["max_runs"] = max_runs
    paths = {key: str(Path(fields[key]).resolve()) for key in ("program_path", "baseline_path")}
    try:
        config = ExperimentConfig(
            **{**fields, **paths, "db_url": fields.get("db_url") or ""},
            home=str(home_dir),
            proposer=spec,
            rule=rule,
            devices=devices.split(",") if devices else None,
        )
    except ValidationError as exc:
        fail(explain(exc, OPTION_OF_FIELD))
    check_slots(config)
    if stored is None and spec.startswith("optuna"):
        check_search_space(config)
    return config, why


def check_search_space(config: ExperimentConfig) -> None:
    """A new Optuna study's search space, from the baseline and program.md's optuna-space block: a block that cannot
    be used is refused before anything runs."""
    try:
        search_space(Path(config.baseline_path).read_text(), read_program(Path(config.program_path)))
    except (SpaceError, ProgramError, OSError) as exc:
        fail(f"--proposer optuna: {exc}")


def check_slots(config: ExperimentConfig) -> None:
    """Slots that cannot fit this machine are refused before anything runs (the flow plans them again, with the
    experiment's stored settings)."""

    if config.local_slots and not config.pool:
        fail(f"--local-slots {config.local_slots}: goes with --pool (without one, --slots are here)")
    if config.pool:  # a pool's slots are its workers' cores; what runs here is --local-slots
        here, flag = config.local_slots or 0, "--local-slots"
    else:
        here, flag = config.slots or len(config.devices or []), "--slots" if config.slots else "--devices"
    if not here:
        return
    try:
        plan_slots(here, config.cpu_threads or settings.default_cpu_threads(), config.devices)
    except SlotError as exc:
        fail(f"{flag}: {exc}")


def field_option(field: str, *flags: str, **given: Any) -> Any:
    """An option that is ExperimentConfig's field: its default and its help text are the field's."""
    info = ExperimentConfig.model_fields[field]
    return typer.Option(given.pop("default", info.default), *flags, help=given.pop("help", info.description), **given)


@app.command()
def run(
    name: str = field_option("name", "--experiment", "-e"),
    iterations: int = field_option("iterations", "--iterations"),
    budget_s: float = field_option("budget_s", "--budget"),
    proposer: str = typer.Option("auto", "--proposer", help="auto, offline, optuna, claude, openai or replay:DIR"),
    sampler: Optional[str] = typer.Option(
        None, "--sampler", help="with --proposer optuna: tpe (default), cmaes or random"
    ),
    revise_every: int = field_option("revise_every", "--revise-every"),
    repeats: int = field_option("repeats", "--repeats"),
    max_runs: Optional[int] = typer.Option(
        None,
        "--max-runs",
        help=f"the keep rule's cap: runs of one candidate (default {RuleConfig().max_runs}; fixed per experiment, "
        "changed with --change-rule)",
    ),
    program_path: Path = field_option("program_path", "--program"),
    baseline_path: Path = field_option("baseline_path", "--baseline"),
    db_url: Optional[str] = field_option("db_url", "--db", default=None),
    home: Optional[Path] = field_option("home", "--home", default=None),
    device: Optional[str] = field_option("device", "--device"),
    export_allowance_s: Optional[float] = field_option("export_allowance_s", "--export-allowance"),
    startup_allowance_s: Optional[float] = field_option("startup_allowance_s", "--startup-allowance"),
    inference_allowance_s: float = field_option("inference_allowance_s", "--inference-allowance"),
    cpu_threads: Optional[int] = field_option("cpu_threads", "--cpu-threads"),
    slots: Optional[int] = field_option("slots", "--slots"),
    devices: Optional[str] = field_option("devices", "--devices"),
    pool: Optional[str] = field_option("pool", "--pool"),
    local_slots: Optional[int] = field_option("local_slots", "--local-slots"),
    model: Optional[str] = field_option("model", "--model"),
    max_cost: Optional[float] = field_option("max_cost", "--max-cost"),
    preflight: Optional[bool] = field_option("preflight", "--preflight/--no-preflight"),
    fix_attempts: int = field_option("fix_attempts", "--fix-attempts"),
    change_rule: bool = typer.Option(
        False,
        "--change-rule",
        help="resuming: change the experiment's proposer or acceptance rule on purpose (recorded in its history and "
        "research log)",
    ),
) -> None:
    """Run (or resume) the research loop on Prefect."""
    options = {key: value for key, value in locals().items() if key != "change_rule"}  # the configuration's fields
    config, why = experiment_config(**options)
    experiment = config.name
    check_device(device)
    check_data()
    home_dir = Path(config.home)

    try:
        holder = lock_holder(home_dir / experiment) or database_holder(results_db_url(home_dir, db_url), experiment)
    except operator_files.ForeignPath as exc:
        fail(str(exc), code=1)
    if holder:
        fail(f"experiment {experiment!r} is already running ({holder})")
    if config.pool and not connect_to_server(home_dir):
        fail(
            f"--pool {config.pool}: the workers need a Prefect server they can reach: start one with `autoresearch ui` "
            "(or set PREFECT_API_URL and PREFECT_API_AUTH_STRING); see docs/pool.md"
        )
    out.print(f"proposer: {why}")

    try:
        with prefect_api(home_dir) as api_url:
            out.print(f"prefect API: {api_url}")
            best = research(config, change_rule)
    except (LockHeld, ConfigMismatch, SlotError) as exc:
        fail(str(exc))
    except operator_files.ForeignPath as exc:
        fail(str(exc), code=1)
    out.print(
        f"[bold]best[/]: iteration {best['iteration']}, val_accuracy {best['val_accuracy']:.4f}, "
        f"test_accuracy {best['test_accuracy']}: {escape(display.one_line(best['hypothesis']))}"
    )
    out.print(f"history: autoresearch history {experiment}   research log: git -C {home_dir / experiment} log -p")


def with_options_of(
    source: Callable[..., None], but: tuple[str, ...] = ()
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command source's options too (all but those named), after its own (one list of run's options, one
    help text each)."""

    def give(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True).parameters
        shared = [
            p
            for name, p in inspect.signature(source, eval_str=True).parameters.items()
            if name not in own and name not in but
        ]
        params = [p for p in own.values() if p.kind is not p.VAR_KEYWORD] + shared
        command.__signature__ = inspect.Signature(params)  # what Typer reads
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return give


@app.command()
@with_options_of(run, but=("change_rule",))  # a schedule never changes an experiment's rule or proposer
def deploy(
    cron: Optional[str] = typer.Option(None, "--cron", help='when to run, a cron string, e.g. "0 22 * * *" (UTC)'),
    interval: Optional[float] = typer.Option(None, "--interval", help="or: every SECONDS"),
    hours: Optional[float] = typer.Option(
        None, "--hours", help="each run ends cleanly between iterations before H hours"
    ),
    until: Optional[str] = typer.Option(None, "--until", help="or before this local time, HH:MM (e.g. 07:00)"),
    remove_it: Optional[str] = typer.Option(
        None, "--remove", help="remove the deployment of this experiment, and stop"
    ),
    iterations: int = field_option("iterations", "--iterations", help="new iterations per scheduled run"),
    **options: Any,
) -> None:
    """Schedule an experiment (each run resumes it, adding --iterations) and serve its runs here until Ctrl-C."""

    home_dir = home_of(options["home"])
    if remove_it is not None:
        check_name(remove_it)
        use_server(home_dir)
        try:
            deployments.remove(remove_it)
        except deployments.DeploymentError as exc:
            fail(str(exc), code=1)
        out.print(f"removed the deployment research/{remove_it} and its automations", highlight=False)
        return
    try:  # bad input first: no server needed to say so
        schedule = deployments.schedule_of(cron, interval)
    except deployments.DeploymentError as exc:
        fail(str(exc))
    if hours is not None and hours <= 0:
        fail(f"--hours must be positive, got {hours:g}")
    config, why = experiment_config(
        iterations=iterations,
        **options,
        new_iterations=True,
        stop_after_s=hours * 3600 if hours is not None else None,
        stop_at=until,
    )
    api_url = use_server(home_dir)
    check_device(options["device"])
    check_data()
    store_deployed_config(config)
    os.chdir(settings.REPO_ROOT)  # the deployment's entrypoint, flows/scheduled.py, is relative to it
    out.print(f"proposer: {why}")
    out.print(
        f"prefect API: {api_url}; deployment research/{config.name}, {next(iter(schedule))} "
        f"{cron or interval}; Ctrl-C stops serving (the schedule is paused)",
        highlight=False,
    )
    deployments.serve_forever(deployments.build(config, cron, interval), config)


def store_deployed_config(config: ExperimentConfig) -> None:
    """What the deployment's runs will read (they take the experiment's name only); a change of a fixed setting of
    an existing experiment is refused here, before anything is served."""

    store = open_store(config.db_url, Path(config.home))
    exp = store.experiment(config.name)
    changes = fixed_setting_changes(exp.config, config) if exp is not None else []
    if changes:
        fail(
            "; ".join(
                f"experiment {config.name!r} runs with {key}={before!r} (asked for {now!r})"
                for key, before, now in changes
            )
            + ": deploy it with the same settings, or deploy a new experiment"
        )
    store.set_deployed_config(config.name, config.model_dump())


def use_server(home_dir: Path) -> str:
    """The persistent Prefect API (PREFECT_API_URL or `autoresearch ui`'s), for this process and what it starts."""
    if not connect_to_server(home_dir):  # a private API would die with this command, and the schedule with it
        fail("deploy needs a persistent Prefect server: start one with `autoresearch ui --background`", code=1)
    return os.environ["PREFECT_API_URL"]


@app.command(name="deployments")
def list_deployments(home: Optional[Path] = typer.Option(None, "--home")) -> None:
    """Scheduled experiments: schedule and next run."""

    if not connect_to_server(home_of(home)):
        fail("no Prefect server: start one with `autoresearch ui --background`", code=1)
    table = Table(title="deployments of the research flow")
    for column in ("experiment", "schedule", "next run", "paused"):
        table.add_column(column)
    for info in deployments.listed():
        table.add_row(
            escape(info.name),
            info.schedule,
            info.next_run.strftime("%Y-%m-%d %H:%M:%S %Z") if info.next_run else "-",
            "yes" if info.paused else "no",
        )
    out.print(table)


def connect_to_server(home_dir: Path) -> bool:
    """Point this process (and what it starts) at PREFECT_API_URL (with PREFECT_API_AUTH_STRING, if set) or at the
    recorded `autoresearch ui` server with its credentials, if one answers."""

    url, auth = os.environ.get("PREFECT_API_URL"), os.environ.get("PREFECT_API_AUTH_STRING")
    if url is None:
        record = recorded_server(home_dir)
        url, auth = (record.url, credentials(home_dir)) if record else (None, None)
    if url is None or not healthy(url):
        return False
    point_prefect_at(url, auth)
    return True


@app.command()
def ui(
    port: int = typer.Option(4200, "--port", help="port on 127.0.0.1"),
    background: bool = typer.Option(False, "--background", help="detach: the server outlives this command"),
    stop_it: bool = typer.Option(False, "--stop", help="stop the recorded server"),
    home: Optional[Path] = typer.Option(None, "--home", help="runs directory (default: AUTORESEARCH_HOME or ./runs)"),
    database_url: Optional[str] = typer.Option(
        None,
        "--database-url",
        help="where the server keeps its state: postgresql+asyncpg://USER:PASSWORD@HOST/DB for many workers "
        "(default: SQLite under the runs directory)",
    ),
) -> None:
    """A persistent Prefect server with its UI; `run` reports to it while it is up. Ctrl-C or --stop ends it."""

    home_dir = home_of(home)
    if stop_it:
        out.print(f"prefect UI: {prefect_ui.stop(home_dir)}", highlight=False)
        return
    live = prefect_ui.running(home_dir)
    if live is not None:
        fail(
            f"a Prefect server is already running at {live.ui_url} (pid {live.pid}); "
            f"stop it first: autoresearch ui --stop",
            code=1,
        )
    if database_url is not None:
        try:
            prefect_ui.check_database_url(database_url)
        except prefect_ui.ServerError as exc:
            fail(str(exc))
    try:
        proc, record = prefect_ui.start(home_dir, port, background, database_url)
    except prefect_ui.ServerError as exc:
        fail(str(exc), code=1)
    out.print(f"prefect UI: {record.ui_url}", highlight=False)
    out.print(
        f"prefect API: {record.url} (pid {record.pid}; recorded in {home_dir / 'prefect-server.json'}, "
        f"log {home_dir / prefect_ui.SERVER_LOG})",
        highlight=False,
    )
    out.print(
        f"credentials: {home_dir / 'prefect-credentials'} (user:password; the UI asks for the password once, "
        f"every autoresearch command sends them)",
        highlight=False,
    )
    if background:
        out.print("stop it with: autoresearch ui --stop", highlight=False)
        return
    out.print("Ctrl-C stops it", highlight=False)
    try:
        proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the server too: it is already shutting down
        prefect_ui.terminate(proc.pid)
        out.print(f"prefect UI: stopped the Prefect server (pid {proc.pid})", highlight=False)
        return
    finally:
        prefect_ui.forget(home_dir, record)
    if proc.returncode != 0:
        fail(f"the Prefect server exited with code {proc.returncode}; see {home_dir / prefect_ui.SERVER_LOG}", code=1)
    out.print(f"prefect UI: the Prefect server stopped (pid {proc.pid})", highlight=False)  # `ui --stop` elsewhere


@app.command()
def history(
    experiment: str = typer.Argument(..., help="experiment name"),
    json_out: bool = typer.Option(False, "--json", help="one JSON array of iteration records"),
    db: Optional[str] = typer.Option(None, "--db"),
    home: Optional[Path] = typer.Option(None, "--home"),
) -> None:
    """Every iteration of an experiment: status, decision, accuracy, hypothesis."""

    check_name(experiment)
    store = open_store(db, home_of(home))
    exp = store.experiment(experiment)
    if exp is None:
        fail(f"no experiment named {experiment!r} in {display_url(store.url)}", code=1)
    rows = store.records(exp.id)
    if json_out:
        print(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
        return
    table = Table(title=f"{experiment} ({exp.status})", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("it", "status", "verdict", "val", "test", "runs", "epochs", "cores", "cost $"):
        table.add_column(column, no_wrap=True)
    table.add_column("how it was decided", overflow="fold")
    table.add_column(escape("hypothesis [reason]"), ratio=1, overflow="fold")
    for r in rows:
        table.add_row(
            str(r.iteration),
            r.status,
            r.verdict or "-",
            f"{r.val_accuracy:.4f}" if r.val_accuracy is not None else "-",
            f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "-",
            str(len(r.measurements)),
            str(r.epochs) if r.epochs is not None else "-",
            cores_column(r.runs),
            f"{r.cost_usd:.4f}",
            escape(r.decision.line()) or "-",
            escape(hypothesis_column(r)),
        )
    out.print(table)
    for change in store.setting_changes(exp.id):
        out.print(
            escape(
                display.one_line(
                    f"setting change after iteration {change.after_iteration}: {change.setting} "
                    f"{change.old!r} -> {change.new!r} (--change-rule)"
                )
            ),
            highlight=False,
        )
    out.print(f"proposer cost: ${store.total_cost(exp.id):.4f} in total")


@app.command()
def report(
    experiment: str = typer.Argument(..., help="experiment name"),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="the HTML file (default: <home>/<experiment>/report.html)"
    ),
    db: Optional[str] = typer.Option(None, "--db"),
    home: Optional[Path] = typer.Option(None, "--home"),
) -> None:
    """One self-contained HTML page: progress plot, every iteration, kept diffs, strategy versions, cost."""

    check_name(experiment)
    home_dir = home_of(home)
    store = open_store(db, home_dir)
    try:
        page = report_for(store, experiment)
    except KeyError:
        fail(f"no experiment named {experiment!r} in {display_url(store.url)}", code=1)
    if out_path is None:  # in the experiment's directory: the operator's, never written through a link
        path = operator_files.operator_dir(home_dir / experiment) / "report.html"
        operator_files.write_text(path, page)
    else:  # where the researcher asked for it: never through a link, nor in a directory another user controls
        path = out_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            operator_files.write_text(path, page)
        except operator_files.ForeignPath as exc:
            fail(f"--out {path}: {exc}", code=1)
    out.print(f"report: {path.resolve()}", highlight=False, soft_wrap=True)


def hypothesis_column(r: IterationRecord) -> str:
    """The hypothesis, what it expected, and why it failed, if it did: one line, nothing a terminal would act on."""
    text = r.hypothesis + (f" (expects: {r.expected_effect})" if r.expected_effect else "")
    return display.one_line(text if r.status == Status.OK else f"{text} [{r.reason}]")


def cores_column(runs: list[MeasuredRun]) -> str:
    """The share of its allotted cores each measured run received (wall: the wall clock); ! marks a contended run."""
    shares = [
        (f"{r.compute.core_share:.0%}" if r.compute.clock == "cpu" else "wall") + ("!" if r.compute.contended else "")
        for r in runs
        if r.compute is not None
    ]
    return " ".join(shares) or "-"


@app.command()
def status(
    db: Optional[str] = typer.Option(None, "--db"),
    home: Optional[Path] = typer.Option(None, "--home"),
    pool: Optional[str] = typer.Option(None, "--pool", help="also the pool's workers and what each slot is running"),
) -> None:
    """Experiments in the store: progress, best, and whether a run holds them now."""

    home_dir = home_of(home)
    store = open_store(db, home_dir)
    table = Table(title=f"experiments in {display_url(store.url)}")
    for column in ("name", "status", "live", "iterations", "kept", "best val", "best test", "budget", "crashes"):
        table.add_column(column)
    for exp in store.experiments():
        records = store.records(exp.id)
        rows = [r for r in records if r.finished]
        kept = [r for r in rows if r.kept]
        best = incumbent_of(rows)
        try:
            holder = lock_holder(home_dir / exp.name) or database_holder(store.url, exp.name)
        except (
            OSError,
            SQLAlchemyError,
        ) as exc:  # a link or a stranger's file where the lock should be: say so, list the rest
            holder = f"refused: {exc}"
        table.add_row(
            exp.name,
            exp.status,
            holder or "no",
            str(max((r.iteration for r in rows), default=-1)),
            str(len(kept) - 1 if kept else 0),
            f"{best.val_accuracy:.4f}" if best else "-",
            f"{best.test_accuracy:.4f}" if best and best.test_accuracy is not None else "-",
            f"{exp.config.get('budget_s')} s",
            str(sum(r.orchestrator_crashes for r in records)),
        )  # runs that died mid-iteration, finished or not
    out.print(table)
    if connect_to_server(home_dir):
        scheduled_runs()
        if pool:
            pool_view(pool, store)
    elif pool:
        fail(f"--pool {pool}: no Prefect server answers (set PREFECT_API_URL, or start `autoresearch ui`)", code=1)


def pool_view(pool: str, store: Store) -> None:
    """A pool's workers, and the runs in flight on it: which experiment's, on which worker, since when."""
    try:
        view = pool_status.read(pool, store)
    except pool_status.PoolMissing as exc:
        fail(str(exc), code=1)
    workers = Table(title=f"workers of pool {escape(pool)}")
    for column in ("worker", "status", "last heartbeat"):
        workers.add_column(column)
    for w in view.workers:
        workers.add_row(escape(w.name), w.status, w.heartbeat.strftime("%Y-%m-%d %H:%M:%S") if w.heartbeat else "-")
    out.print(workers)
    runs = Table(title=f"runs in flight on pool {escape(pool)}")
    for column in ("flow run", "experiment", "state", "worker", "claimed"):
        runs.add_column(column)
    for r in view.runs:
        claimed = r.claimed.strftime("%H:%M:%S") if r.claimed else "-"
        runs.add_row(escape(r.name), escape(r.experiment), r.state, escape(r.worker or "-"), claimed)
    out.print(runs)


def scheduled_runs() -> None:
    """The latest runs of deployed experiments: which crashed, which resumed after a crash."""

    runs = deployments.recent_runs()
    if not runs:
        return
    table = Table(title="latest runs of deployed experiments (autoresearch deployments)")
    for column in ("flow run", "experiment", "state", "started", "after a crash"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            escape(r.name),
            escape(r.deployment),
            r.state,
            r.started.strftime("%Y-%m-%d %H:%M:%S") if r.started else "-",
            "resumed" if r.resumed else "",
        )
    out.print(table)


@app.command()
def worker(
    pool: str = typer.Option(..., "--pool", help="the Prefect work pool to take measured runs from"),
    db: str = typer.Option(..., "--db", help="the coordinator's store (SQLAlchemy URL), where answers go"),
    slots: Optional[int] = typer.Option(None, "--slots", help="runs at once (default: as `run` plans them here)"),
    cpu_threads: int = typer.Option(1, "--cpu-threads", help="cores a run: the coordinator's --cpu-threads"),
    devices: Optional[str] = typer.Option(None, "--devices", help="one GPU per slot, e.g. cuda:0,cuda:1"),
    name: Optional[str] = typer.Option(None, "--name", help="this worker's name (default: the host's name)"),
    home: Optional[Path] = typer.Option(None, "--home", help="this worker's runs directory (default: as `run`'s)"),
) -> None:
    """Measure runs for coordinators on this machine: a Prefect process worker on --pool (docs/pool.md)."""
    home_dir = home_of(home)
    if not connect_to_server(home_dir):
        fail("no Prefect server answers: set PREFECT_API_URL and PREFECT_API_AUTH_STRING to the coordinator's")
    open_store(db, home_dir, upgrade=False)  # a worker never migrates: the coordinator (or `db upgrade`) does
    check_data()
    device_list = devices.split(",") if devices else None
    count = slots or (len(device_list) if device_list else default_slot_count(cpu_threads))
    try:
        setup = WorkerSetup(
            name=name or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:200],
            pool=pool,
            home=operator_files.operator_dir(home_dir / "worker"),
            db_url=db,
            slots=count,
            cpu_threads=cpu_threads,
            devices=device_list,
        )
        planned = setup.plan()
    except ValidationError as exc:
        fail(explain(exc, {"name": "--name", "slots": "--slots", "cpu_threads": "--cpu-threads"}))
    except SlotError as exc:
        fail(f"--slots: {exc}")
    prints = local_fingerprints()
    out.print(
        f"worker {setup.name}: pool {pool}, {'; '.join(s.describe() for s in planned)}; prepare.py "
        f"{prints.prepare_sha256[:12]}, data {prints.data_sha256[:12]}; answers to {display_url(db)}",
        highlight=False,
    )
    # imported here alone: the module registers its worker as Prefect's "process" type, for this process only
    from app import worker as worker_process

    worker_process.serve(setup)


def main() -> None:
    app()


@db_app.command("upgrade")
def db_upgrade(
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the store (default: as `run`'s)"),
    home: Optional[Path] = typer.Option(None, "--home"),
) -> None:
    """Bring the store's schema to this code's revision: once, before readers (history, status, workers) open a
    store on a database server (`run` does it too, as the coordinator)."""
    home_dir = home_of(home)
    url = results_db_url(home_dir, db)
    before = "none"
    if not url.startswith("sqlite:///") or Path(url[len("sqlite:///") :]).exists():  # never make a file to look
        try:
            engine = make_engine(url)
            before = schema_revision(engine) or "none"
            engine.dispose()
        except Exception:  # the store cannot be reached: open_store says why, and exits
            pass
    store = open_store(db, home_dir, upgrade=True)
    out.print(
        f"store {display_url(url)}: schema revision {before} -> {schema_revision(store.engine)} (this code's head)",
        highlight=False,
    )


@db_app.command("worker-grants")
def db_worker_grants(role: str = typer.Argument(..., help="the pool workers' PostgreSQL role")) -> None:
    """Print the SQL that lets a pool's workers use the store as ROLE: read the schema's revision, claim and answer
    jobs, nothing else (docs/pool.md). Run it as the store's owner, e.g. `... | psql autoresearch`."""
    try:
        statements = worker_grants(role)
    except ValueError as exc:
        fail(str(exc))
    print("\n".join(statements))


if __name__ == "__main__":
    main()
