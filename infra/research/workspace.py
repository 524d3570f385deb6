"""
The experiment workspace, runs/<experiment>/:

    train.py            the incumbent
    program.md          the experiment's own program (its Strategy section is revised)
    progress.png        validation accuracy per iteration
    iterations/NNNN/    each candidate: seed-K/ per measured run (infra/sandbox/trial.py's layout), preflight-A/
    .git                every kept change is a commit: `git log -p` reads as the research log

The store is the source of truth; `sync_git` makes the git history agree with it
after any crash (each keep commit carries an `Iteration: N` trailer).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from prepare import MODEL_ARTIFACT

GIT_IDENTITY = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost", "-c", "commit.gpgsign=false"]
# Git runs only on orchestrator-written files, and never runs code from its configuration: no hooks, no
# fsmonitor, no system or user config (a planted hook or fsmonitor would otherwise run as this user).
GIT_SAFETY = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false"]
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
           "GIT_OPTIONAL_LOCKS": "0"}


def _git_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}
TRAILER = re.compile(r"^Iteration: (\d+)$", re.MULTILINE)


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def train_py(self) -> Path:
        return self.root / "train.py"

    @property
    def program_md(self) -> Path:
        return self.root / "program.md"

    def iteration_dir(self, index: int) -> Path:
        return self.root / "iterations" / f"{index:04d}"

    def run_dir(self, index: int, seed: int) -> Path:
        """One measured run of an iteration (infra/sandbox/trial.py's layout)."""
        return self.iteration_dir(index) / f"seed-{seed}"

    def prune_models(self, index: int, keep: Path | None) -> None:
        """Delete the model copies of a decided iteration's runs but the one in `keep` (if any): a
        candidate's models would otherwise take up to the artifact cap per run, night after night."""
        for model in self.iteration_dir(index).glob(f"*/{MODEL_ARTIFACT}"):
            if keep is None or model.parent != keep:
                model.unlink(missing_ok=True)

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *GIT_IDENTITY, *GIT_SAFETY, *args], cwd=self.root, capture_output=True, text=True,
                              env=_git_env())
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.root}: {done.stderr.strip()}")
        return done.stdout

    def ensure(self, baseline_code: str, program: str) -> None:
        """Create the workspace and its first commit, once; later calls leave it as it is."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists():
            self.git("init", "-q")
            (self.root / ".gitignore").write_text("iterations/\n.lock\n*.db\n*.db-*\nprogress.png\n")
        if not self.train_py.exists():
            self.train_py.write_text(baseline_code)
        if not self.program_md.exists():
            self.program_md.write_text(program)
        if not self._has_head():
            self.git("add", "train.py", "program.md", ".gitignore")
            self.git("commit", "-q", "-m", "Baseline\n\nThe starting train.py and program.md.\n\nIteration: 0")

    def _has_head(self) -> bool:
        return subprocess.run(["git", *GIT_SAFETY, "rev-parse", "--verify", "-q", "HEAD"], cwd=self.root,
                              capture_output=True, env=_git_env()).returncode == 0

    def committed_iterations(self) -> list[int]:
        return sorted(int(n) for n in TRAILER.findall(self.git("log", "--format=%B")))

    def commit_keep(self, index: int, hypothesis: str, before: float, after: float, code: str) -> None:
        """Make code the incumbent and commit it; a no-op if that iteration is already committed."""
        if index in self.committed_iterations():
            return
        self.train_py.write_text(code)
        self.git("add", "train.py", "program.md")
        message = (f"Iteration {index}: {hypothesis or 'untitled change'}\n\n"
                   f"val_accuracy {before:.4f} -> {after:.4f} ({after - before:+.4f})\n\nIteration: {index}")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def commit_program(self, version: int, after_iteration: int) -> None:
        """Commit a revised program.md (no trailer: it is not an iteration)."""
        self.git("add", "program.md")
        if self.git("status", "--porcelain", "program.md").strip():
            self.git("commit", "-q", "-m", f"Strategy version {version} (after iteration {after_iteration})")
