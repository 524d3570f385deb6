"""Prefect tasks, one per step of an iteration: propose, train, evaluate, decide, revise strategy."""
