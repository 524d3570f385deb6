"""
The results store: SQLAlchemy 2.0 models, Alembic-managed schema, idempotent writes.

SQLite (WAL mode) under the runs directory by default; any SQLAlchemy URL works
(PostgreSQL included). The store is the source of truth for resuming: an
iteration counts as done only when its row has finished_at set.

Engines are created per Store object, never at import time, so Prefect never has
to pickle one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from infra import operator_files
from infra.records import IterationRecord, MeasuredRun, PoolLease

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


DB_URL_ENV = "AUTORESEARCH_DB_URL"


def default_db_url(home: Path) -> str:
    """SQLite in the runs directory."""
    return f"sqlite:///{Path(home) / 'autoresearch.db'}"


def results_db_url(home: Path, explicit: str | None = None) -> str:
    """Where results live: the URL given (--db), else AUTORESEARCH_DB_URL, else SQLite in the runs directory."""
    return explicit or os.environ.get(DB_URL_ENV) or default_db_url(home)


def display_url(url: str) -> str:
    """url with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: shown as given (the error says why)
        return url


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="created")  # created, running, finished, stopped, failed
    # what `autoresearch deploy` gave its scheduled runs (they take the name only): an ExperimentConfig, or None
    deployed_config: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Iteration(Base):
    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("experiment_id", "index", name="uq_iteration"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    index: Mapped[int] = mapped_column(Integer)
    proposer: Mapped[str] = mapped_column(String(64), default="")
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    expected_effect: Mapped[str] = mapped_column(Text, default="", server_default="")
    change_type: Mapped[str] = mapped_column(String(16), default="")  # infra/records.py ChangeType
    code: Mapped[str] = mapped_column(Text, default="")
    diff: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="running")  # infra/records.py Status
    reason: Mapped[str] = mapped_column(Text, default="")
    val_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    propose_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    measurements: Mapped[list] = mapped_column(JSON, default=list)  # validation accuracy of every seed run
    verdict: Mapped[str] = mapped_column(String(16), default="")  # infra/records.py Verdict
    decision: Mapped[dict] = mapped_column(JSON, default=dict)  # infra/records.py DecisionRecord
    attempts: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")  # pre-flight and fix attempts
    # before migration 0007 the measured runs lived here; that migration copied them to measured_runs, which alone is
    # written and read since (IterationRecord.runs)
    runs: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    memory: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")  # the proposer's structured memory
    # runs that found this iteration left running: the orchestrator died in it (flows/research.py's loop guard)
    orchestrator_crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MeasuredRunRow(Base):
    """One measured run (infra/records.py MeasuredRun), stored as it finishes."""

    __tablename__ = "measured_runs"
    __table_args__ = (UniqueConstraint("experiment_id", "seq", name="uq_measured_run"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    seq: Mapped[int] = mapped_column(Integer)
    iteration: Mapped[int] = mapped_column(Integer)
    decided_in: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    val_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    inference_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    contended: Mapped[bool] = mapped_column(Boolean, default=False)
    remeasured: Mapped[bool] = mapped_column(Boolean, default=False)
    compute: Mapped[dict] = mapped_column(JSON, default=dict)
    slot: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # the measurement slot that made it
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    made_at: Mapped[datetime] = mapped_column(default=utcnow)
    worker: Mapped[str] = mapped_column(String(200), default="", server_default="")  # a pool's worker; '' local


# a claim's times are a worker's to write: only ones every driver can read back (not PostgreSQL's 'infinity', nor a
# year past 9999, which would stop the coordinator reading its jobs)
POOL_TIMES_CHECK = (
    "started_at BETWEEN '2000-01-01' AND '9000-01-01' AND beat_at BETWEEN '2000-01-01' AND '9000-01-01' AND "
    "(answered_at IS NULL OR answered_at BETWEEN '2000-01-01' AND '9000-01-01')"
)


class PoolJobRow(Base):
    """A job a pool's worker took (infra/pool/): who, when it last beat, and its answer once made."""

    __tablename__ = "pool_jobs"
    __table_args__ = (CheckConstraint(POOL_TIMES_CHECK, name="ck_pool_jobs_times"),)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
    answer: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # a first run's model file, if sent


class StrategyVersion(Base):
    __tablename__ = "strategy_versions"
    __table_args__ = (UniqueConstraint("experiment_id", "version", name="uq_strategy_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    version: Mapped[int] = mapped_column(Integer)
    after_iteration: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    lessons: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProposerCall(Base):
    __tablename__ = "proposer_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(32), default="propose")
    model: Mapped[str] = mapped_column(String(128), default="")
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SettingChange(Base):
    """A fixed setting (the rule, the proposer) changed on resume, asked for with --change-rule."""

    __tablename__ = "setting_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    setting: Mapped[str] = mapped_column(String(32))
    old: Mapped[Any] = mapped_column(JSON, nullable=True)
    new: Mapped[Any] = mapped_column(JSON, nullable=True)
    after_iteration: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoreError(RuntimeError):
    """The database could not be opened or migrated."""


class StoreBusy(StoreError):
    """A pool's table was locked past POOL_LOCK_TIMEOUT (a worker's session holding a lock): nothing was done."""


POOL_LOCK_TIMEOUT = "5s"  # how long a statement on pool_jobs waits for a lock a worker's session may hold...
POOL_STATEMENT_TIMEOUT = "60s"  # ...and runs at all: a worker can stall the pool's table, never the coordinator


def set_columns(row: Base, fields: dict[str, Any]) -> None:
    """Set each field on an ORM row; one that is not a column of its table (a misspelt name) raises StoreError,
    since setattr would make it a plain attribute that is never stored."""
    columns = set(row.__table__.columns.keys())
    unknown = sorted(set(fields) - columns)
    if unknown:
        raise StoreError(f"not a column of {row.__tablename__}: {', '.join(unknown)}")
    for key, value in fields.items():
        setattr(row, key, value)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


MIGRATION_LOCK = 0x6175746F72657365  # "autorese": the advisory lock coordinators on one PostgreSQL migrate under


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    """The revision the database's schema is at (None: no store schema there yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision. On PostgreSQL under an advisory lock: coordinators that
    start together migrate one after the other, and the second finds nothing left to do."""
    from alembic import command

    cfg = _alembic_config(url)
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            locked = engine.dialect.name == "postgresql"
            if locked:
                connection.execute(text("select pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()
            try:
                cfg.attributes["connection"] = connection  # migrations/env.py runs on it
                command.upgrade(cfg, "head")
                connection.commit()
            finally:
                if locked:
                    connection.execute(text("select pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                    connection.commit()
    finally:
        engine.dispose()


def _check_sqlite_file(url: str) -> None:
    """An SQLite store's file, if there, is a regular file of the operator's in a directory of theirs, 0600:
    SQLite itself would follow a link at the name (infra/operator_files.py)."""
    path = Path(url[len("sqlite:///") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):  # SQLite gives its -wal and -shm files the database's mode
        operator_files.restrict_file(path)


class Store:
    def __init__(self, url: str, upgrade: bool | None = None):
        """The store at url. upgrade: bring its schema to this code's revision first. By default a local SQLite file
        is brought up to date by whoever opens it (as it always was); a database server's store is migrated once,
        by the coordinator (`autoresearch run`, which passes True) or `autoresearch db upgrade`, and any other
        opener refuses a schema that is not at this code's revision (StoreError, saying what to run)."""
        self.url = url
        sqlite = url.startswith("sqlite:")
        try:
            if url.startswith("sqlite:///"):
                _check_sqlite_file(url)
            self.engine = make_engine(url)
            if upgrade if upgrade is not None else sqlite:
                migrate(url)
            else:
                found, needed = schema_revision(self.engine), head_revision()
                if found != needed:
                    raise StoreError(
                        f"the results store {display_url(url)} has schema revision {found or 'none (empty)'}, this "
                        f"code needs {needed}: run `autoresearch db upgrade --db URL` once (or start the coordinator, "
                        f"`autoresearch run`, which does)"
                    )
            if url.startswith("sqlite:///"):
                _check_sqlite_file(url)  # made just now, with the umask's mode: the operator's alone from here
        except StoreError:
            raise
        except (SQLAlchemyError, OSError, ValueError) as exc:
            raise StoreError(f"cannot open results store {display_url(url)!r}: {exc}") from exc
        except Exception as exc:  # alembic wraps driver errors in its own types
            raise StoreError(f"cannot open results store {display_url(url)!r}: {type(exc).__name__}: {exc}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def pool_session(self) -> Iterator[Session]:
        """A session on pool_jobs, which workers write too: on PostgreSQL its statements wait at most
        POOL_LOCK_TIMEOUT for a lock (one a worker holds) and run at most POOL_STATEMENT_TIMEOUT, else StoreBusy."""
        try:
            with self.session() as s:
                if self.engine.dialect.name == "postgresql":
                    s.execute(text(f"SET LOCAL lock_timeout = '{POOL_LOCK_TIMEOUT}'"))
                    s.execute(text(f"SET LOCAL statement_timeout = '{POOL_STATEMENT_TIMEOUT}'"))
                yield s
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) in ("55P03", "57014"):  # lock_not_available, query_canceled
                raise StoreBusy(f"the pool's jobs table is locked by another session: {exc.orig}") from None
            raise

    # --- experiments ---------------------------------------------------------

    def experiment(self, name: str) -> Experiment | None:
        with self.session() as s:
            return s.scalar(select(Experiment).where(Experiment.name == name))

    @staticmethod
    def _experiment_in(s: Session, name: str, config: dict[str, Any]) -> Experiment:
        """The named experiment in session s, made (with config) if there is none."""
        exp = s.scalar(select(Experiment).where(Experiment.name == name))
        if exp is None:
            exp = Experiment(name=name, config=config, status="created")
            s.add(exp)
            s.flush()
        return exp

    def ensure_experiment(self, name: str, config: dict[str, Any]) -> Experiment:
        with self.session() as s:
            return self._experiment_in(s, name, config)

    def set_experiment(self, experiment_id: int, **fields: Any) -> None:
        with self.session() as s:
            set_columns(s.get(Experiment, experiment_id), fields)

    def set_deployed_config(self, name: str, config: dict[str, Any]) -> Experiment:
        """The configuration of the experiment's scheduled runs (`autoresearch deploy`), creating the experiment."""
        with self.session() as s:
            exp = self._experiment_in(s, name, config)
            exp.deployed_config = config
            s.flush()
            return exp

    def add_setting_change(self, experiment_id: int, setting: str, old: Any, new: Any, after_iteration: int) -> None:
        with self.session() as s:
            s.add(
                SettingChange(
                    experiment_id=experiment_id, setting=setting, old=old, new=new, after_iteration=after_iteration
                )
            )

    def setting_changes(self, experiment_id: int) -> list[SettingChange]:
        with self.session() as s:
            q = select(SettingChange).where(SettingChange.experiment_id == experiment_id)
            return list(s.scalars(q.order_by(SettingChange.id)))

    def experiments(self) -> list[Experiment]:
        with self.session() as s:
            return list(s.scalars(select(Experiment).order_by(Experiment.id)))

    # --- iterations ----------------------------------------------------------

    def put_iteration(self, experiment_id: int, index: int, **fields: Any) -> Iteration:
        """Insert or update the (experiment, index) row: running it twice leaves one row. A field that is not a
        column is refused (StoreError), not silently dropped."""
        with self.session() as s:
            row = s.scalar(select(Iteration).where(Iteration.experiment_id == experiment_id, Iteration.index == index))
            if row is None:
                row = Iteration(experiment_id=experiment_id, index=index)
                s.add(row)
            set_columns(row, fields)
            s.flush()
            return row

    def add_iteration(self, experiment_id: int, **fields: Any) -> Iteration:
        """A new iteration, numbered by the store: the experiment's next index, taken in the inserting statement's
        own transaction; two writers that raced for one number are told by the unique constraint, and the loser
        takes the next (as add_measured_run)."""
        for _ in range(20):
            try:
                with self.session() as s:
                    last = s.scalar(select(func.max(Iteration.index)).where(Iteration.experiment_id == experiment_id))
                    row = Iteration(experiment_id=experiment_id, index=(last if last is not None else -1) + 1)
                    set_columns(row, fields)
                    s.add(row)
                    s.flush()
                    return row
            except IntegrityError:
                continue
        raise StoreError("could not number an iteration: too many concurrent writers")

    def iterations(self, experiment_id: int, finished_only: bool = False) -> list[Iteration]:
        with self.session() as s:
            q = select(Iteration).where(Iteration.experiment_id == experiment_id)
            if finished_only:
                q = q.where(Iteration.finished_at.is_not(None))
            return list(s.scalars(q.order_by(Iteration.index)))

    def records(self, experiment_id: int, finished_only: bool = False) -> list[IterationRecord]:
        """The iterations as typed records, each with the cost of its proposer calls and its runs: those of its own
        code made for its own decision, up to when it was decided (a run still in flight then did not count)."""
        costs = self.cost_by_iteration(experiment_id)
        runs: dict[int, list[MeasuredRun]] = {}
        for run in self.measured_runs(experiment_id):
            if run.iteration == run.decided_in:
                runs.setdefault(run.iteration, []).append(run)
        return [
            IterationRecord.from_row(
                row,
                costs.get(row.index, 0.0),
                [
                    r
                    for r in runs.get(row.index, [])
                    if row.finished_at is None or r.made_at is None or r.made_at <= row.finished_at
                ],
            )
            for row in self.iterations(experiment_id, finished_only)
        ]

    # --- measured runs -------------------------------------------------------

    def add_measured_run(self, experiment_id: int, run: MeasuredRun) -> MeasuredRun:
        """Store one measured run, numbered by the store: its seq is the experiment's next, taken in the inserting
        statement's own transaction; two writers that raced for one number are told by the unique constraint, and
        the loser takes the next. Returns the run as stored (its seq and time)."""
        values = {f: getattr(run, f) for f in MeasuredRun.__dataclass_fields__ if f not in ("seq", "made_at")}
        for _ in range(20):
            try:
                with self.session() as s:
                    last = s.scalar(
                        select(func.max(MeasuredRunRow.seq)).where(MeasuredRunRow.experiment_id == experiment_id)
                    )
                    row = MeasuredRunRow(
                        experiment_id=experiment_id,
                        seq=(last or 0) + 1,
                        made_at=utcnow(),
                        **{
                            **values,
                            "status": str(run.status),
                            "compute": run.compute.as_dict() if run.compute else {},
                        },
                    )
                    s.add(row)
                    s.flush()
                    return MeasuredRun.from_row(row)
            except IntegrityError:
                continue
        raise StoreError("could not number a measured run: too many concurrent writers")

    def measured_runs(
        self, experiment_id: int, iteration: int | None = None, decided_in: int | None = None
    ) -> list[MeasuredRun]:
        """The experiment's measured runs in the order they were made; of one iteration's code, or made for one
        iteration's decision, when given."""
        with self.session() as s:
            q = select(MeasuredRunRow).where(MeasuredRunRow.experiment_id == experiment_id)
            if iteration is not None:
                q = q.where(MeasuredRunRow.iteration == iteration)
            if decided_in is not None:
                q = q.where(MeasuredRunRow.decided_in == decided_in)
            return [MeasuredRun.from_row(row) for row in s.scalars(q.order_by(MeasuredRunRow.seq))]

    # --- a pool's jobs (infra/pool/) -----------------------------------------

    def claim_pool_job(self, job_id: str, worker: str) -> bool:
        """A worker starts job_id; False if another claimed it first (a job is measured once)."""
        try:
            with self.pool_session() as s:
                now = utcnow()
                s.add(PoolJobRow(job_id=job_id, worker=worker, started_at=now, beat_at=now))
            return True
        except IntegrityError:
            return False

    def beat_pool_job(self, job_id: str, worker: str) -> None:
        """The worker that claimed job_id is still at it."""
        with self.pool_session() as s:
            s.execute(
                update(PoolJobRow)
                .where(PoolJobRow.job_id == job_id, PoolJobRow.worker == worker, PoolJobRow.answer.is_(None))
                .values(beat_at=utcnow())
            )

    def answer_pool_job(self, job_id: str, worker: str, answer: bytes, model: bytes | None = None) -> bool:
        """The claiming worker's answer to job_id, and the model file it brings back (if any), in one write; False
        if the job is not its own or has its answer already."""
        with self.pool_session() as s:
            done = s.execute(
                update(PoolJobRow)
                .where(PoolJobRow.job_id == job_id, PoolJobRow.worker == worker, PoolJobRow.answer.is_(None))
                .values(answer=answer, model=model, answered_at=utcnow(), beat_at=utcnow())
            )
            return bool(done.rowcount)

    def pool_jobs(self, job_ids: Iterable[str], max_answer_bytes: int) -> list[PoolLease]:
        """Where these jobs stand on the pool's workers (the ones no worker has claimed are absent). An answer over
        max_answer_bytes is not read (a worker wrote it): its lease says how long it is, with no answer. Length and
        answer come from one statement, so a worker cannot swap a long answer in between."""
        wanted = list(job_ids)
        if not wanted:
            return []
        size = func.length(PoolJobRow.answer)
        bounded = case((size <= max_answer_bytes, PoolJobRow.answer), else_=None)
        with self.pool_session() as s:
            rows = s.execute(
                select(PoolJobRow.job_id, PoolJobRow.worker, PoolJobRow.started_at, PoolJobRow.beat_at, bounded, size)
                .where(PoolJobRow.job_id.in_(wanted))
            ).all()  # fmt: skip
        return [PoolLease(*row) for row in rows]

    def pool_model(self, job_id: str, max_bytes: int) -> bytes | None:
        """The model file a worker brought back with job_id's answer; None if it sent none, or one over max_bytes
        (a worker wrote it: one statement reads it only within the bound)."""
        size = func.length(PoolJobRow.model)
        with self.pool_session() as s:
            return s.scalar(
                select(case((size <= max_bytes, PoolJobRow.model), else_=None)).where(PoolJobRow.job_id == job_id)
            )

    def forget_pool_jobs(self, job_ids: Iterable[str]) -> None:
        """The coordinator has settled these jobs: their rows (and answers) go."""
        wanted = list(job_ids)
        if wanted:
            with self.pool_session() as s:
                s.execute(delete(PoolJobRow).where(PoolJobRow.job_id.in_(wanted)))

    # --- strategy and proposer calls ----------------------------------------

    def add_strategy(
        self, experiment_id: int, version: int, after_iteration: int, text: str, lessons: str = ""
    ) -> None:
        with self.session() as s:
            row = s.scalar(
                select(StrategyVersion).where(
                    StrategyVersion.experiment_id == experiment_id, StrategyVersion.version == version
                )
            )
            if row is None:
                s.add(
                    StrategyVersion(
                        experiment_id=experiment_id,
                        version=version,
                        after_iteration=after_iteration,
                        text=text,
                        lessons=lessons,
                    )
                )

    def strategies(self, experiment_id: int) -> list[StrategyVersion]:
        with self.session() as s:
            q = select(StrategyVersion).where(StrategyVersion.experiment_id == experiment_id)
            return list(s.scalars(q.order_by(StrategyVersion.version)))

    def add_proposer_call(self, experiment_id: int, iteration: int, **fields: Any) -> None:
        with self.session() as s:
            s.add(ProposerCall(experiment_id=experiment_id, iteration=iteration, **fields))

    def cost_by_iteration(self, experiment_id: int) -> dict[int, float]:
        with self.session() as s:
            rows = s.execute(
                select(ProposerCall.iteration, ProposerCall.cost_usd).where(ProposerCall.experiment_id == experiment_id)
            )
            costs: dict[int, float] = {}
            for iteration, cost in rows:
                costs[iteration] = costs.get(iteration, 0.0) + cost
            return costs

    def total_cost(self, experiment_id: int) -> float:
        with self.session() as s:
            rows = s.scalars(select(ProposerCall.cost_usd).where(ProposerCall.experiment_id == experiment_id))
            return float(sum(rows))
