"""
What every language-model proposer shares: the prompt, the tool schemas, validation,
the one re-ask, cost accounting and the spending cap. Providers (claude.py,
openai_compat.py) only say how to send a request and read a tool call.

Prompt layout (Prompt below). Anthropic caches in the order tools -> system -> messages,
so what never changes comes first and every call (propose, fix, revise) sends the same
prefix: both tools (tool_choice forces the one wanted), then

    system   the fixed text: role and tool usage, the scoring contract,
             the acceptance rule, prepare.py's API                          [cache breakpoint]
    system   the experiment's whole program.md (Goal, Rules, Strategy)      [cache breakpoint]
    user     the incumbent train.py                                         [cache breakpoint]
    user     the situation: hardware and budget, the incumbent's runs and
             the margin to beat now, the history with each decision's numbers [cache breakpoint]
    user     the task: propose, fix a crashed candidate, or revise the strategy

Each rule the model works under has one source, program.md; the fixed text states only
how candidates are measured and how to answer. `python -m infra.proposers.prompt_example`
prints a whole request (the README's "What the model sees" is its output).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import prepare
from infra.proposers.base import Proposal, ProposalContext, Revision, StopResearch
from infra.proposers.pricing import ImpossibleUsage, Usage, cost_usd, worst_case_cost_usd
from infra.records import ChangeType, IterationRecord, Status, seconds_per_epoch
from infra.research import acceptance_rule
from infra.research.acceptance_rule import Bar, stored_summary
from infra.research.code_edit import MAX_CODE_BYTES, classify_change, syntax_error
from infra.sandbox.compute_record import describe
from infra.settings import PREFLIGHT_BUDGET_S, PREFLIGHT_IMAGES

MAX_OUTPUT_TOKENS = 8192
HISTORY_ROWS = 30
LOG_TAIL_LINES = 6
# Anthropic caches a prefix only from this many tokens on (Sonnet; Opus and Haiku need more or as much).
MIN_CACHEABLE_TOKENS = 1024
CHARS_PER_TOKEN = 4  # a conservative estimate for English and code (tokenizers average about 4 or fewer)

ROLE = """You are an ML research agent. You improve train.py, a PyTorch training script for \
Fashion-MNIST (10 classes, 28x28 grey images), one change at a time. The experiment's program.md, which \
follows this text, sets the goal, the rules you work under and the current research strategy; this text \
only says how to answer and how each candidate is measured.

# How to answer

Every request offers two tools; its tool_choice names the one to call.

- propose_train_py: the next candidate. `hypothesis`: the one idea, stated so that the result can refute \
it. `change_type`: parametric (only UPPER_CASE constants change) or structural (anything else); the \
orchestrator re-measures it from the code, against the incumbent. `expected_effect`: the change in \
validation accuracy and in completed epochs you expect. Then either `train_py` (the whole new file) or \
`edits` (exact search/replace pairs; each search text must occur exactly once). Edits apply to the \
incumbent train.py, or, when you are asked to fix a candidate that crashed, to that candidate.
- revise_strategy: a new Strategy section for program.md (`strategy`, markdown without its heading) and \
`lessons`, one lesson per line.

An answer that misses a required field, whose edits do not apply, that is not valid Python or that \
changes nothing is sent back once with the error; a second invalid answer is recorded as a failed \
iteration, never trained."""

SCORING_CONTRACT = f"""# How a candidate is measured (fixed code; train.py cannot change any of it)

1. Pre-flight. Before any budget is spent, the candidate trains for {PREFLIGHT_BUDGET_S:g} s on the first \
{PREFLIGHT_IMAGES:,} training images in the same sandbox. If it crashes, its traceback comes back to you with \
a request for a fix, and the fix is measured like any candidate.
2. Training. A fresh directory holds train.py and a read-only prepare.py, without network access. The only \
data it can reach is the training split: each measured run gets {prepare.RUN_SUBSET:.0%} of the \
50,000 training images, chosen by its seed. The budget runs on one clock (prepare.budget_clock): on a \
CPU it is CPU time of the allotted cores, counted per allotted core (a budget of 120 s on 2 cores is 240 CPU \
seconds in all; torch gets that many threads, more threads or worker processes only spend it faster, and a \
busy machine does not shorten it); on a GPU it is wall time. Start-up (interpreter, imports, data onto the \
device) has its own allowance before the budget starts. TrainingBudget ends training at an epoch boundary \
when the next epoch (with {prepare.EPOCH_MARGIN:g} times its predicted time to spare) would not end by the deadline. \
After the deadline a run has only the export allowance, the measured time save_model needs for a reference CNN, to \
save and exit: time after the deadline buys no training. A run still going at its deadline plus the export \
allowance is killed (SIGKILL) and never scored, as is one that passes the memory cap or the disk cap.
3. Scoring. save_model exports the model (eval mode, on the CPU, in batches of {prepare.EVAL_BATCH_SIZE}) \
as a core ATen graph. Fixed code in another process runs that graph on the {prepare.VAL_SIZE:,} validation \
images and computes the accuracy from labels train.py never sees. Those images are raw pixels in [0, 1], \
N x 1 x 28 x 28, exactly as load_split returns them: any normalisation belongs inside the model's \
forward(), or the scored model sees other inputs than the trained one did. Nothing train.py prints is \
ever the metric. Inference is budgeted: the scoring process runs on one CPU core, and a model that spends more \
than the inference allowance (CPU seconds per 10,000 images, below) is invalid.
4. Decision, by a sequential test (the margins below). Each candidate run is a look: after its first run a \
candidate that is clearly not better is discarded; a promising one gets more runs with other seeds (and the \
incumbent is measured again, so both are measured in the same period of the night), up to the cap, until the \
test is sure enough that it is better (a keep needs at least two runs, every run counts, and every run must \
succeed; the seeds are random, so no run can be told from another). Each decision reads like "+0.46 points, \
99.91% sure, 5 runs (incumbent 7); keep needs 99.86%". A kept candidate becomes the incumbent. \
Crashes, timeouts and models that cannot be scored are discarded with their reason.

# The facts each request gives you, after program.md

The incumbent train.py (the best so far). The hardware and the budget. The incumbent's runs and the \
margin a candidate must beat now. The history, oldest first: for each iteration its decision with the \
numbers that made it (its delta against the incumbent's mean at the time, how sure the test was that it \
is better, its runs and the incumbent's, how sure a keep needed to be, and why it stopped); the epochs it completed and its training seconds, both \
measured by the orchestrator on the budget's clock; how each run ended (it stopped itself at an epoch \
boundary, or it was killed at the deadline, or it crashed, with the reason and the last lines of its \
log); the compute each run received (CONTENDED marks a run the machine's load starved; it is measured \
again); and the pre-flight attempts when the first version crashed and was fixed."""

ACCEPTANCE_RULE = "# The acceptance rule (infra/research/acceptance_rule.py)\n" + (acceptance_rule.__doc__ or "")
PREPARE_CONTRACT = "# prepare.py (fixed; you cannot change it) documents its API as follows\n" + (prepare.__doc__ or "")
FIXED_TEXT = "\n\n".join([ROLE, SCORING_CONTRACT, ACCEPTANCE_RULE.rstrip(), PREPARE_CONTRACT.rstrip()])

PROPOSE_TOOL = {
    "name": "propose_train_py",
    "description": "Propose the next candidate train.py.",
    "input_schema": {
        "type": "object",
        "properties": {
            "hypothesis": {"type": "string", "description": "what you change and why it should raise validation accuracy"},
            "change_type": {"type": "string", "enum": ["parametric", "structural"]},
            "expected_effect": {"type": "string", "description": "expected change in validation accuracy and epochs"},
            "train_py": {"type": "string", "description": "the whole new train.py (or use edits)"},
            "edits": {
                "type": "array",
                "description": "exact search/replace edits to the incumbent (to the failed candidate when fixing one); "
                               "each search must occur exactly once",
                "items": {"type": "object", "properties": {"search": {"type": "string"}, "replace": {"type": "string"}},
                          "required": ["search", "replace"]},
            },
        },
        "required": ["hypothesis", "change_type", "expected_effect"],
    },
}

REVISE_TOOL = {
    "name": "revise_strategy",
    "description": "Rewrite the Strategy section of program.md from the results so far.",
    "input_schema": {
        "type": "object",
        "properties": {
            "strategy": {"type": "string", "description": "the new Strategy section (markdown, no heading)"},
            "lessons": {"type": "string", "description": "lessons learned, one per line"},
        },
        "required": ["strategy", "lessons"],
    },
}

# Sent on every call, in this order, so that propose, fix and revise share one cached prefix.
TOOLS = [PROPOSE_TOOL, REVISE_TOOL]


class InvalidProposal(ValueError):
    """A tool answer that cannot become a runnable train.py."""


class CallFailed(RuntimeError):
    """A model call that gave no usable answer in time, or reported an impossible usage: recorded, never retried."""


class CallTimedOut(TimeoutError):
    pass


# A whole call, the SDK's own retries included, ends by this deadline: the SDK's timeout is per read, and a server
# that sends a byte now and then held one call for as long as it liked (red team), the run `running` all the while.
CALL_DEADLINE_S = 15 * 60


def within_deadline(call: Callable[[], Any], seconds: float) -> Any:
    """call() in a daemon thread, waited for at most seconds (CallTimedOut after; the thread is abandoned, and dies with
    the process). Its exception, if it raised one, is raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="model-call")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise CallTimedOut(f"no answer within {seconds:g} s (the server was still sending, or silent)")
    if "error" in box:
        raise box["error"]
    return box["value"]


class SpendingCapReached(StopResearch):
    """The next call could pass --max-cost."""


@dataclass(frozen=True)
class Prompt:
    """One request's text in cache order; each part but the task ends at a cache breakpoint."""

    fixed: str  # system: the same for every call of every experiment
    program: str  # system: the experiment's program.md (changes when the strategy is revised)
    incumbent: str  # user: the incumbent train.py
    situation: str  # user: hardware, the margin to beat, the history (the same for a propose and its fixes)
    task: str  # user: what this call asks for

    def system(self) -> list[str]:
        return [self.fixed, self.program]

    def user(self) -> list[str]:
        return [self.incumbent, self.situation, self.task]

    def chars(self) -> int:
        return sum(len(part) for part in self.system() + self.user())


@dataclass
class ToolAnswer:
    data: dict[str, Any] | None  # the tool's input, or None when the model did not call it
    raw: Any  # the provider's message, to continue the conversation
    usage: Usage
    error: str = ""  # why data is unusable as JSON, when it is


def estimated_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


# --- validation ------------------------------------------------------------------

def missing_fields(data: Any, tool: dict[str, Any]) -> list[str]:
    """The fields the tool's schema requires that the answer lacks, leaves empty or gives as something other than
    text (the schema is the one list); all of them when the answer is not an object."""
    required = tool["input_schema"]["required"]
    if not isinstance(data, dict):
        return list(required)
    return [key for key in required if not isinstance(data.get(key), str) or not data[key].strip()]


def apply_edits(code: str, edits: list[Any]) -> str:
    """The edits applied in order; InvalidProposal for an edit that is not {search: text, replace: text} or whose
    search text does not occur exactly once (a model's answer is checked for type, never trusted to have one)."""
    for n, edit in enumerate(edits, 1):
        if not isinstance(edit, dict) or not isinstance(edit.get("search"), str) \
                or not isinstance(edit.get("replace", ""), str):
            raise InvalidProposal(f"edit {n} must be an object with text fields 'search' and 'replace'")
        search, replace = edit["search"], edit.get("replace", "")
        count = code.count(search) if search else 0
        if count != 1:
            raise InvalidProposal(f"edit {n}: its search text occurs {count} times in the code it edits; it must occur exactly once")
        code = code.replace(search, replace, 1)
    return code


def proposal_from(data: dict[str, Any] | None, incumbent: str, edit_base: str | None = None) -> Proposal:
    """Validate a tool answer; InvalidProposal says what is wrong, for the re-ask.
    Edits apply to edit_base (a crashed candidate being fixed; the incumbent by default); the change
    type is always measured against the incumbent, the code the candidate will be compared with."""
    edit_base = incumbent if edit_base is None else edit_base
    if not data:
        raise InvalidProposal("no propose_train_py tool call in the answer")
    if not isinstance(data, dict):
        raise InvalidProposal(f"the propose_train_py input must be an object, got {type(data).__name__}")
    missing = missing_fields(data, PROPOSE_TOOL)
    if missing:
        raise InvalidProposal(f"missing or empty field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    if data["change_type"] not in ("parametric", "structural"):
        raise InvalidProposal(f"change_type must be 'parametric' or 'structural', got {data['change_type']!r}")
    if isinstance(data.get("train_py"), str) and data["train_py"].strip():
        code = data["train_py"]
        if len(code) > MAX_CODE_BYTES:  # before anything parses it
            raise InvalidProposal(f"the new train.py is larger than {MAX_CODE_BYTES // 1024} KiB")
    elif isinstance(data.get("edits"), list) and data["edits"]:
        code = apply_edits(edit_base, data["edits"])
    else:
        raise InvalidProposal("give either train_py (the whole file) or a non-empty list of edits")
    problem = syntax_error(code)
    if problem:
        raise InvalidProposal(f"the new train.py is not valid Python: {problem}")
    if code == incumbent:
        raise InvalidProposal("the new train.py is identical to the incumbent")
    if code == edit_base:
        raise InvalidProposal("the new train.py is identical to the failed candidate; it would crash again")
    measured = classify_change(incumbent, code)  # trust the AST over the model's label
    return Proposal(hypothesis=data["hypothesis"].strip(), change_type=measured if measured != ChangeType.NONE else ChangeType(data["change_type"]),
                    code=code, expected_effect=data["expected_effect"].strip())


# --- the situation: what the history rows say ------------------------------------------

def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


RUN_ENDINGS = {"ok": "stopped itself at an epoch boundary", "timeout": "killed at the deadline (timeout)",
               "crashed": "crashed", "invalid": "trained, but its model could not be scored"}


def run_line(run: dict[str, Any]) -> str:
    """One measured run, from the orchestrator's record: how it ended, epochs, seconds, the compute it got."""
    per_epoch = seconds_per_epoch(run.get("train_seconds"), run.get("epochs"))
    score = f", val_accuracy {run['val_accuracy']:.4f}" if run.get("val_accuracy") is not None else ""
    compute = describe(run)
    return (f"seed {run.get('seed')}: {RUN_ENDINGS.get(run.get('status', ''), run.get('status', ''))}{score}; "
            f"{_num(run.get('epochs'), 'd')} epochs in {_num(run.get('train_seconds'), '.1f')} s "
            f"({_num(per_epoch, '.2f')} s per epoch)"
            + (f"; inference {run['inference_seconds']:.1f} CPU s" if run.get("inference_seconds") is not None else "")
            + (f"; {compute}" if compute else ""))


def decision_text(f: IterationRecord) -> str:
    """The decision with the numbers that made it (acceptance_rule.summary's form)."""
    numbers = stored_summary(f.rule)
    if numbers:
        return f"{f.decision}: {numbers}"
    if f.measurements:
        return f"{f.decision}: mean {statistics.fmean(f.measurements):.4f} of {_plural(len(f.measurements), 'run')}"
    return f.decision or "-"


def preflight_text(attempts: list[dict[str, Any]]) -> str:
    """The pre-flight crash and fix, if any ('' when the first version ran)."""
    if len(attempts) <= 1 and all(a.get("status") == "ok" for a in attempts):
        return ""
    steps = []
    for a in attempts:
        fix = f" (fix: {a.get('note')})" if a.get("attempt") else ""  # attempt 0 is the proposal itself
        reason = f": {a.get('reason')}" if a.get("status") != "ok" and a.get("reason") else ""
        steps.append(f"attempt {a.get('attempt')}{fix} {a.get('status')}{reason}")
    return "pre-flight: " + "; ".join(steps)


HISTORY_HEADER = ("iteration | type | status | decision (delta vs the incumbent then, how sure, runs, what a keep needed) | "
                  "epochs | training s | s per epoch | hypothesis")


def history_text(history: list[IterationRecord]) -> str:
    if not history:
        return "No iterations yet."
    lines = [HISTORY_HEADER]
    for f in history[-HISTORY_ROWS:]:
        lines.append(f"{f.iteration} | {f.change_type} | {f.status} | {decision_text(f)} | {_num(f.epochs, 'd')} | "
                     f"{_num(f.train_seconds, '.1f')} | {_num(f.seconds_per_epoch, '.2f')} | "
                     f"{f.hypothesis}")
        if f.expected_effect:
            lines.append(f"    expected: {f.expected_effect}")
        lines.extend(f"    run {run_line(run)}" for run in f.runs)
        if preflight_text(f.attempts):
            lines.append(f"    {preflight_text(f.attempts)}")
        if f.status != Status.OK:
            lines.append(f"    reason: {f.reason}")
            lines.extend(f"    | {tail}" for tail in f.log_tail.splitlines()[-LOG_TAIL_LINES:])
    return "\n".join(lines)


def hardware_text(hw: dict[str, Any]) -> str:
    threads = hw.get("cpu_threads")
    clock = (f" of CPU time on {threads} allotted cores (torch gets {threads} threads; a busy machine does not "
             f"shorten it, and more threads only spend it faster)" if threads else " of wall time, the device to itself")
    device = str(hw.get("device"))
    if hw.get("device_name"):
        memory = f", {hw['device_memory_gib']:g} GiB" if hw.get("device_memory_gib") else ""
        device += f" ({hw['device_name']}{memory})"
    budget = hw.get("budget_s")
    budget = format(budget, "g") if isinstance(budget, (int, float)) else budget
    lines = [f"Hardware: device {device}; training budget {budget} s{clock} per candidate."]
    if hw.get("startup_allowance_s") is not None:
        lines.append(f"Start-up allowance {hw['startup_allowance_s']:g} s before the budget starts; the export allowance "
                     f"after the deadline, to save and exit before SIGKILL, {hw.get('export_allowance_s', 0):g} s "
                     f"(both on the budget's clock, in total, not per core).")
    if hw.get("inference_allowance_s") is not None:
        lines.append(f"Inference allowance: {hw['inference_allowance_s']:g} CPU s on one core per 10,000 images, "
                     f"batches of {prepare.EVAL_BATCH_SIZE} (the seed's 3-block CNN takes about 5); a model over it is "
                     f"invalid.")
    if hw.get("cpu_cores"):
        lines.append(f"Machine: {hw['cpu_cores']} CPU cores ({hw.get('usable_cores', hw['cpu_cores'])} usable by the "
                     f"sandbox); memory cap per candidate {hw.get('memory_cap_gib', 0):g} GiB of host memory.")
    if hw.get("slots", 1) > 1:
        lines.append(f"{hw['slots']} measurement slots: {hw['slots']} candidates are measured side by side, each on its "
                     f"own cores (and GPU), with the same budget.")
    return "\n".join(lines)


def load_text(history: list[IterationRecord]) -> str:
    """Whether the latest measurement was taken under load (from its compute record)."""
    measured = [(f.iteration, run) for f in history for run in f.runs if "clock" in run]
    if not measured:
        return "No measured runs yet: the machine's load is unknown."
    iteration, run = measured[-1]
    state = ("CONTENDED: the machine's load starved it (such runs are measured again)" if run.get("contended")
             else "not contended")
    free = f"{run['free_cores']:.1f} cores left free by the rest of the machine, " if "free_cores" in run else ""
    return f"Load: the latest measured run (iteration {iteration}, seed {run.get('seed')}) had {free}{state}."


def incumbent_text(f: IterationRecord | None, bar: Bar | None) -> str:
    """The incumbent's current runs, mean and noise, and the margins a candidate must beat now (the rule's own
    numbers: acceptance_rule.Bar)."""
    if f is None:
        return "No incumbent measured yet."
    lines = [f"The incumbent is iteration {f.iteration} ({f.hypothesis})."]
    if bar is not None and bar.scores:
        lines.append(f"Its {_plural(len(bar.scores), 'current run')} (measured within the drift window): "
                     f"{', '.join(f'{s:.4f}' for s in bar.scores)}; reference mean {bar.mean:.4f}; noise of one run "
                     f"{bar.sigma:.4f} (with the experiment's floor {bar.floor_sigma:.4f}).")
        lines.append(f"A first run below {bar.mean + bar.continue_above:.4f} ({bar.continue_above * 100:+.2f} points) is "
                     f"discarded at once; above it, the candidate gets more runs, up to {bar.max_runs}.")
        lines.append(f"To be kept, the mean of its runs must beat the incumbent's by about "
                     f"{bar.keep_at_min * 100:.2f} points after {bar.min_keep_runs} runs, or "
                     f"{bar.keep_at_max * 100:.2f} points after {bar.max_runs} (and never by less "
                     f"than {bar.min_delta * 100:.2f}).")
    if f.runs:
        lines.append("Its runs when it was decided:")
        lines.extend(f"    run {run_line(run)}" for run in f.runs)
    return "\n".join(lines)


def situation(ctx: ProposalContext) -> str:
    return (f"# Hardware and budget\n\n{hardware_text(ctx.hardware)}\n{load_text(ctx.history)}\n\n"
            f"# The incumbent and the margin to beat now\n\n{incumbent_text(ctx.incumbent, ctx.bar)}\n\n"
            f"# History (oldest first)\n\n{history_text(ctx.history)}")


# --- the tasks --------------------------------------------------------------------------

def in_flight_text(ctx: ProposalContext) -> str:
    """The candidates being measured now in other slots, which a new proposal should not repeat."""
    if not ctx.in_flight:
        return ""
    lines = [f"- iteration {c.iteration} ({c.change_type or 'unknown'}): {' '.join(c.hypothesis.split())[:300]}"
             for c in ctx.in_flight]
    return ("\n\nBeing measured now in other slots, against the same incumbent (their results are not in yet; do "
            "not propose these again):\n" + "\n".join(lines))


def propose_task(ctx: ProposalContext) -> str:
    return (f"# Task\n\nPropose iteration {ctx.iteration}: one change most likely to raise validation accuracy "
            f"within the budget. Call propose_train_py.{in_flight_text(ctx)}")


def fix_task(candidate: Proposal, error: str, log_tail: str) -> str:
    return (f"# Task\n\nYour candidate for this iteration ({candidate.hypothesis}) failed a short pre-flight run on a "
            f"small subset, before any budget was spent: {error}\n\nIts train.py:\n```python\n{candidate.code}\n```\n\n"
            f"Last lines of its output (the traceback):\n```\n{log_tail}\n```\n\n"
            "Fix it so that it runs, keeping the same idea. Call propose_train_py with the whole corrected train.py, "
            "or with edits to the failed candidate; its change type is measured against the incumbent.")


def revise_task(ctx: ProposalContext) -> str:
    return ("# Task\n\nRewrite the research strategy (the Strategy section of program.md, above) from these results: "
            "what to try next, what to stop trying, and lessons learned (for example 'normalisation changes need "
            "more epochs to show their value'). Call revise_strategy.")


def prompt(ctx: ProposalContext, task: str) -> Prompt:
    return Prompt(fixed=FIXED_TEXT,
                  program=f"# program.md (this experiment's program)\n\n{ctx.program.strip()}",
                  incumbent=f"# Incumbent train.py (the best so far)\n\n```python\n{ctx.incumbent_code}\n```",
                  situation=situation(ctx), task=task)


class LLMProposer:
    """Shared logic; subclasses implement _send (one request) and _reask (continue after a bad answer)."""

    name = "llm"
    model = ""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.max_cost_left: float | None = None

    # --- provider hooks ---------------------------------------------------------

    def _send(self, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        """One request: TOOLS, prompt in its cache order, turns after it; tool_choice forces tool_name."""
        raise NotImplementedError

    def _reask(self, answer: ToolAnswer, error: str) -> list[Any]:
        """Conversation turns that show the model its bad answer and the error."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------

    def _call(self, purpose: str, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        prompt_chars = prompt.chars() + len(str(TOOLS)) + sum(len(str(t)) for t in turns)
        spent = sum(c["cost_usd"] for c in self.calls)
        if self.max_cost_left is not None and spent + worst_case_cost_usd(prompt_chars, MAX_OUTPUT_TOKENS, self.model) > self.max_cost_left:
            raise SpendingCapReached(f"the next {purpose} call could pass the spending cap "
                                     f"(${self.max_cost_left - spent:.4f} left)")
        started = time.monotonic()
        try:
            answer = within_deadline(lambda: self._send(prompt, tool_name, turns), CALL_DEADLINE_S)
        except (ImpossibleUsage, CallTimedOut) as exc:  # what it cost is unknown: counted at the worst case
            worst = worst_case_cost_usd(prompt_chars, MAX_OUTPUT_TOKENS, self.model)
            self.calls.append({"purpose": purpose, "model": self.model, "input_tokens": 0, "output_tokens": 0,
                               "cache_write_tokens": 0, "cache_read_tokens": 0, "cost_usd": worst,
                               "latency_s": time.monotonic() - started})
            raise CallFailed(str(exc)) from None
        self.calls.append({"purpose": purpose, "model": self.model, "input_tokens": answer.usage.input_tokens,
                           "output_tokens": answer.usage.output_tokens,
                           "cache_write_tokens": answer.usage.cache_write_tokens,
                           "cache_read_tokens": answer.usage.cache_read_tokens,
                           "cost_usd": cost_usd(answer.usage, self.model), "latency_s": time.monotonic() - started})
        return answer

    def _ask_for_proposal(self, ctx: ProposalContext, purpose: str, task: str, edit_base: str) -> Proposal:
        """One answer and, if it is invalid, one re-ask; then a failed proposal (error set)."""
        self.max_cost_left = ctx.max_cost_left
        request = prompt(ctx, task)
        turns: list[Any] = []
        error = ""
        first_call = len(self.calls)  # the result carries the calls made for it
        for attempt in range(2):
            try:
                answer = self._call(purpose if attempt == 0 else f"{purpose}-reask", request, PROPOSE_TOOL["name"],
                                    turns)
            except CallFailed as exc:
                return Proposal(hypothesis="", change_type=ChangeType.UNKNOWN, code=ctx.incumbent_code,
                                error=f"the model call failed: {exc}", calls=self.calls[first_call:])
            try:
                if answer.error:
                    raise InvalidProposal(answer.error)
                proposal = proposal_from(answer.data, ctx.incumbent_code, edit_base)
                proposal.calls = self.calls[first_call:]
                return proposal
            except InvalidProposal as exc:
                error = str(exc)
                turns = turns + self._reask(answer, error)
        hypothesis = answer.data.get("hypothesis", "") if isinstance(answer.data, dict) else ""
        return Proposal(hypothesis=hypothesis if isinstance(hypothesis, str) else "",
                        change_type=ChangeType.UNKNOWN, code=ctx.incumbent_code, error=f"invalid proposal after one re-ask: {error}",
                        calls=self.calls[first_call:])

    def propose(self, ctx: ProposalContext) -> Proposal:
        return self._ask_for_proposal(ctx, "propose", propose_task(ctx), ctx.incumbent_code)

    def fix(self, ctx: ProposalContext, candidate: Proposal, error: str, log_tail: str) -> Proposal:
        return self._ask_for_proposal(ctx, "fix", fix_task(candidate, error, log_tail), candidate.code)

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        """A new Strategy section and lessons; one re-ask, then the strategy stays as it is."""
        self.max_cost_left = ctx.max_cost_left
        request = prompt(ctx, revise_task(ctx))
        turns: list[Any] = []
        first_call = len(self.calls)
        for attempt in range(2):
            try:
                answer = self._call("revise" if attempt == 0 else "revise-reask", request, REVISE_TOOL["name"], turns)
            except CallFailed as exc:
                return Revision(ctx.strategy, f"strategy revision failed: {exc}; the strategy is unchanged",
                                self.calls[first_call:])
            data = answer.data
            missing = missing_fields(data, REVISE_TOOL)
            if not missing:
                return Revision(data["strategy"].strip(), data["lessons"].strip(), self.calls[first_call:])
            turns = turns + self._reask(answer, f"revise_strategy needs non-empty strings: {', '.join(missing)}")
        return Revision(ctx.strategy, "strategy revision failed: no valid answer; the strategy is unchanged",
                        self.calls[first_call:])
