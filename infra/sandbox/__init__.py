"""
Running an untrusted train.py: the sandbox and everything that measures, limits and reads it.

    run.py              bubblewrap, the sandbox user, limits, and the launch of one job
    watchdog.py         the budget's clock, the deadline, and the kill
    trial.py            one candidate through the sandbox, then independent evaluation
    evaluation.py       fixed code scores the saved model in its own sandboxed process
    compute_record.py   the compute a run received, and whether the machine starved it
"""
