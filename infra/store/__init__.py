"""The results store: the schema (SQLAlchemy models, Alembic migrations) and the Store that reads and writes it."""

from infra.store.store import (
    MIGRATIONS_DIR,
    Base,
    Experiment,
    Iteration,
    MeasuredRunRow,
    ProposerCall,
    SettingChange,
    Store,
    StoreBusy,
    StoreError,
    StrategyVersion,
    default_db_url,
    make_engine,
    migrate,
    results_db_url,
    utcnow,
)

__all__ = [
    "MIGRATIONS_DIR",
    "Base",
    "Experiment",
    "Iteration",
    "MeasuredRunRow",
    "ProposerCall",
    "SettingChange",
    "Store",
    "StoreBusy",
    "StoreError",
    "StrategyVersion",
    "default_db_url",
    "make_engine",
    "migrate",
    "results_db_url",
    "utcnow",
]
