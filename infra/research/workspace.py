"""
The experiment workspace, runs/<experiment>/:

    train.py            the incumbent
    program.md          the experiment's own program (its Strategy section is revised)
    progress.png        validation accuracy per iteration
    iterations/NNNN/    each candidate: seed-K/ per measured run (infra/sandbox/trial.py's layout), preflight-A/
    .git                every kept change is a commit: `git log -p` reads as the research log

The store is the source of truth; `Loop.sync` (flows/research.py) makes the git history agree with it
after any crash (each keep commit carries an `Iteration: N` trailer, read back by git's own trailer
parser, never by a pattern over free text: a hypothesis is a proposer's text).

The directory and its files are the operator's (infra/operator_files.py): made 0700, files written through
a rename and read without following links. Commit messages go to git on its standard input, never on the
command line (a long one would not fit: E2BIG).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from infra import operator_files
from prepare import MODEL_ARTIFACT

GIT_IDENTITY = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost", "-c", "commit.gpgsign=false"]
# Git runs only on orchestrator-written files, and never runs code from its configuration: no hooks, no
# fsmonitor, no system or user config (a planted hook or fsmonitor would otherwise run as this user).
GIT_SAFETY = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false"]
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
}


def _git_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}


TRAILER = "Iteration"  # the trailer that ties a keep commit to its iteration
GITIGNORE = "iterations/\n.lock\n*.db\n*.db-*\nprogress.png\nreport.html\n.*.partial\n"


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

    def prune_models(self, index: int, keep: Path | None, busy: set[Path] = frozenset()) -> None:
        """Delete the model copies of a decided iteration's runs but the one in `keep` (if any) and those of runs
        being measured now (busy: another slot may be measuring this code): a candidate's models would otherwise
        take up to the artifact cap per run, night after night."""
        for model in self.iteration_dir(index).glob(f"*/{MODEL_ARTIFACT}"):
            if (keep is None or model.parent != keep) and model.parent not in busy:
                model.unlink(missing_ok=True)

    def git(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["git", *GIT_IDENTITY, *GIT_SAFETY, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env=_git_env(),
            input=stdin,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed in {self.root}: {done.stderr.strip()[:2000]}")
        return done.stdout

    def commit(self, message: str, *args: str) -> None:
        """A commit whose message git reads from its standard input (any length, any text but NUL)."""
        self.git("commit", "-q", *args, "-F", "-", stdin=message.replace("\0", ""))

    # --- the incumbent and the program, as files of the operator's -----------------------

    def read_train_py(self) -> str:
        return operator_files.read_text(self.train_py)

    def write_train_py(self, code: str) -> None:
        operator_files.write_text(self.train_py, code)

    def read_program_md(self) -> str:
        return operator_files.read_text(self.program_md)

    def write_program_md(self, text: str) -> None:
        operator_files.write_text(self.program_md, text)

    def ensure(self, baseline_code: str, program: str) -> None:
        """Create the workspace and its first commit, once; later calls leave it as it is (after checking that the
        directory is the operator's and that what it holds is not a link)."""
        operator_files.operator_dir(self.root)
        if not os.path.lexists(self.root / ".git"):
            self.git("init", "-q")
            operator_files.write_text(self.root / ".gitignore", GITIGNORE)
        elif not (self.root / ".git").is_dir() or (self.root / ".git").is_symlink():
            raise operator_files.ForeignPath(f"{self.root / '.git'} is not a git directory of this workspace")
        for path, text in ((self.train_py, baseline_code), (self.program_md, program)):
            if os.path.lexists(path):
                operator_files.read_text(path)  # refuses a link or another user's file standing there
            else:
                operator_files.write_text(path, text)
        if not self._has_head():
            self.git("add", "train.py", "program.md", ".gitignore")
            self.commit(f"Baseline\n\nThe starting train.py and program.md.\n\n{TRAILER}: 0\n")

    def _has_head(self) -> bool:
        return (
            subprocess.run(
                ["git", *GIT_SAFETY, "rev-parse", "--verify", "-q", "HEAD"],
                cwd=self.root,
                capture_output=True,
                env=_git_env(),
            ).returncode
            == 0
        )

    def committed_iterations(self) -> list[int]:
        """The iterations that have a keep commit, from git's trailer parser: only the `Iteration: N` of a
        message's trailer block counts, and only an N of ASCII digits (a hypothesis is free text)."""
        found = []
        for commit in self.git("log", f"--format=%(trailers:key={TRAILER},valueonly,separator=%x2C)%x00").split("\0"):
            values = commit.strip().split(",") if commit.strip() else []
            if len(values) == 1 and values[0].isascii() and values[0].isdigit():
                found.append(int(values[0]))
        return sorted(found)

    def commit_keep(self, index: int, hypothesis: str, before: float, after: float, code: str) -> None:
        """Make code the incumbent and commit it; a no-op if that iteration is already committed. The hypothesis
        goes in one line of the subject (its line breaks are spaces here), never in the trailer block."""
        if index in self.committed_iterations():
            return
        self.write_train_py(code)
        self.git("add", "train.py", "program.md")
        subject = " ".join((hypothesis or "untitled change").split())
        self.commit(
            f"Iteration {index}: {subject}\n\nval_accuracy {before:.4f} -> {after:.4f} ({after - before:+.4f})"
            f"\n\n{TRAILER}: {index}\n",
            "--allow-empty",
        )

    def commit_program(self, version: int, after_iteration: int) -> None:
        """Commit a revised program.md (no trailer: it is not an iteration)."""
        self.git("add", "program.md")
        if self.git("status", "--porcelain", "program.md").strip():
            self.commit(f"Strategy version {version} (after iteration {after_iteration})\n")

    def commit_note(self, subject: str, body: str) -> None:
        """An empty commit that records an event in the research log (a setting changed on resume)."""
        self.commit(f"{' '.join(subject.split())}\n\n{body}\n", "--allow-empty")
