"""The `autoresearch` command line (Typer for parsing, Rich for output)."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra import settings

app = typer.Typer(help="Autoresearch for Fashion-MNIST.", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()


@app.callback()
def root() -> None:
    """Autoresearch for Fashion-MNIST: sandboxed training, scoring no candidate can fake."""


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def check_device(device: Optional[str]) -> None:
    """Validate --device (or AUTORESEARCH_DEVICE) before anything starts."""
    import prepare

    if device:
        os.environ["AUTORESEARCH_DEVICE"] = device
    try:
        prepare.get_device()
    except ValueError as exc:
        fail(str(exc))


def check_data() -> None:
    import prepare

    try:
        prepare.ensure_data()
    except prepare.DataUnavailable as exc:
        fail(str(exc), code=1)


def make_limits(budget: float, grace: float, startup_allowance: float, memory_cap_gb: Optional[float]) -> settings.Limits:
    if memory_cap_gb is not None and memory_cap_gb <= 0:
        fail(f"--memory-cap-gb must be positive, got {memory_cap_gb}")
    try:
        return settings.Limits(
            budget_s=budget,
            grace_s=grace,
            startup_allowance_s=startup_allowance,
            memory_cap_bytes=int(memory_cap_gb * 2**30) if memory_cap_gb else 0,
        )
    except ValueError as exc:
        fail(str(exc))
        raise  # unreachable: fail raises


def with_progress(label: str, budget: float, work, quiet: bool):
    """Run work(on_line) in a thread while a bar shows training time against the budget."""
    if quiet:
        return work(None)
    box: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), console=out, transient=True) as progress:
        task = progress.add_task(label, total=budget, last="starting")
        started: dict[str, float] = {}

        def on_line(line: str) -> None:
            if line.startswith("budget_start:"):
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
    grace: float = typer.Option(settings.DEFAULT_GRACE_S, "--grace", help="seconds after the budget before SIGKILL"),
    startup_allowance: float = typer.Option(settings.DEFAULT_STARTUP_ALLOWANCE_S, "--startup-allowance", help="seconds for imports and data loading, outside the budget"),
    memory_cap_gb: Optional[float] = typer.Option(None, "--memory-cap-gb", help="memory cap (default: half of RAM)"),
    home: Optional[Path] = typer.Option(None, "--home", help="runs directory (default: AUTORESEARCH_HOME or ./runs)"),
) -> None:
    """Train one candidate in the sandbox and score it on the validation split."""
    if not path.is_file():
        fail(f"no such file: {path}")
    limits = make_limits(budget, grace, startup_allowance, memory_cap_gb)
    check_device(device)
    check_data()
    from infra.trial import run_trial

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = settings.runs_home(home) / "scratch" / f"{stamp}-{path.stem}"
    code = path.read_text()
    result = with_progress(
        f"training {path.name}", budget,
        lambda on_line: run_trial(code, run_dir, limits, seed=seed, device=device, on_line=on_line),
        quiet=json_out,
    )
    if json_out:
        print(result.to_json())
        return
    table = Table(show_header=False, box=None)
    for key in ("status", "reason", "val_accuracy", "val_loss", "epochs", "train_seconds", "wall_seconds"):
        value = getattr(result, key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("peak_memory", f"{result.peak_memory_bytes / 2**20:.0f} MiB")
    table.add_row("isolated", "bubblewrap" if result.isolated else "no (bubblewrap missing)")
    table.add_row("log", result.log_path)
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
