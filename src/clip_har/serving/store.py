"""The prediction log and feedback store of the inference service (SQLAlchemy 2).

Every prediction the service answers is logged (id, time, model version, top-k,
confidence, latency; image bytes only when ``--store-images`` is on), and user feedback
references a logged prediction. Any SQLAlchemy URL works: ``sqlite:///file.db`` (the
default; WAL journal with ``synchronous=FULL``) or ``postgresql+psycopg://...``.

Writes go through ONE writer thread that drains a queue and commits everything queued in
one transaction (group commit): 32 concurrent requests cost one fsync, not 32. A caller's
``await`` returns only after its rows are committed, so an answer sent after it (2xx)
survives a SIGKILL of the server.

:func:`export_feedback` turns the corrected examples into the ``labels.csv`` + ``images/``
layout that ``clip-har data import`` reads, closing the loop from feedback back to data.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import logging
import queue
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from clip_har.errors import (
    ClipHarError,
    InvalidFeedbackError,
    StoreClosedError,
    StoreError,
    UnknownPredictionError,
)
from clip_har.io import atomic_write, publish_directory, write_text_atomic

if TYPE_CHECKING:
    from clip_har.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another process's lock
MAX_GROUP = 1024  # jobs committed in one transaction at most
LABEL_LENGTH = 1000  # column width of labels (settings.max_label_length is at most this)
COMMENT_LENGTH = 1000
LABELS_CSV = "labels.csv"
IMAGES_FOLDER = "images"
PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")

# image type (from the first bytes) -> file extension of a stored upload
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PredictionRecord:
    """One answered prediction, as logged."""

    id: str  # uuid4 hex
    created_at: datetime  # UTC
    model_name: str
    model_version: str
    route: str  # "v1/predict", "v1/predict/batch", "v1/classify", "v2/infer"
    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    latency_ms: float
    image_sha256: str | None = None

    @staticmethod
    def new_id() -> str:
        """A fresh prediction id (uuid4 hex)."""
        return uuid.uuid4().hex


@dataclass(frozen=True)
class FeedbackRecord:
    """One piece of feedback on a logged prediction; ``label`` is the right label (the
    predicted one when ``correct``)."""

    id: str
    prediction_id: str
    created_at: datetime
    correct: bool
    label: str | None
    comment: str | None


@dataclass(frozen=True)
class GroupStats:
    """Reviewed predictions of one group (a predicted label or a model version)."""

    reviewed: int
    correct: int
    incorrect: int
    accuracy: float | None


@dataclass(frozen=True)
class ModelStats:
    """Reviewed predictions of one model name and version."""

    model_name: str
    model_version: str
    reviewed: int
    correct: int
    incorrect: int
    accuracy: float | None


@dataclass(frozen=True)
class FeedbackStats:
    """What the feedback says about the predictions. A prediction reviewed several times
    counts once, with its latest feedback; ``feedback_rows`` counts every row."""

    predictions: int
    feedback_rows: int
    total: int  # reviewed predictions
    correct: int
    incorrect: int
    accuracy: float | None
    by_label: dict[str, GroupStats] = field(default_factory=dict)  # by predicted label
    by_model: list[ModelStats] = field(default_factory=list)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_feedback` wrote."""

    out_dir: Path
    rows: int  # images written (one row each in labels.csv)
    labels: dict[str, int]  # rows per corrected label
    reviewed: int  # predictions with feedback
    missing_images: int  # reviewed predictions without a stored image
    conflicts: int  # images corrected to different labels (the latest feedback wins)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of latency in milliseconds (``None`` when there are no predictions)."""

    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class StatsBucket:
    """The predictions of one time bucket ``[start, start + bucket_seconds)``."""

    start: datetime  # UTC, a whole multiple of bucket_seconds since the epoch
    count: int
    by_label: dict[str, int]  # predicted label -> predictions (labels with none left out)
    latency_ms: LatencySummary
    mean_confidence: float | None
    reviewed: int  # predictions of the bucket with feedback (latest feedback counts)
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class DriftScoreRecord:
    """One score of one ``clip-har monitor drift`` run (``drifted``: over its threshold)."""

    run_id: str
    created_at: datetime  # UTC
    metric: str
    value: float
    threshold: float
    drifted: bool
    reference_id: str
    samples: int  # what the score was computed on (predictions or images of the window)
    since: datetime | None  # start of the window; None: the whole log


@dataclass(frozen=True)
class PredictionWindow:
    """The logged predictions of a time window, oldest first, as parallel lists."""

    since: datetime | None
    until: datetime
    labels: list[str]
    confidences: list[float]
    image_sha256: list[str | None]
    model_versions: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PredictionStats:
    """Predictions logged in ``[since, until]``, overall and per time bucket."""

    since: datetime
    until: datetime
    bucket_seconds: int
    model_version: str | None
    total: int
    by_label: dict[str, int]
    latency_ms: LatencySummary
    mean_confidence: float | None
    reviewed: int
    correct: int
    accuracy: float | None
    buckets: list[StatsBucket]


def _accuracy(correct: int, reviewed: int) -> float | None:
    return correct / reviewed if reviewed else None


# --------------------------------------------------------------------------- schema


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps none)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps of the store must be timezone-aware")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return (
            value.replace(tzinfo=timezone.utc)
            if value.tzinfo is None
            else value.astimezone(timezone.utc)
        )


metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("label", sa.String(LABEL_LENGTH), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("top_k", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("image_sha256", sa.String(64), nullable=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "prediction_id",
        sa.String(32),
        sa.ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("correct", sa.Boolean, nullable=False),
    sa.Column("label", sa.String(LABEL_LENGTH), nullable=True),
    sa.Column("comment", sa.String(COMMENT_LENGTH), nullable=True),
)


# scores of `clip-har monitor drift` runs (one row per metric and run); the server exports
# the latest of each metric as a gauge and in /v1/stats/predictions
drift_scores = sa.Table(
    "drift_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("reference_id", sa.String(64), nullable=False),
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("since", UTCDateTime(), nullable=True),
    sa.Index("ix_drift_scores_metric_created", "metric", "created_at"),
)


# --------------------------------------------------------------------------- engines

_WRITE = "clip_har_write"  # execution option: this connection's transactions write


def safe_url(url: str) -> str:
    """``url`` for messages and logs: the password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def reason(exc: BaseException) -> str:
    """What a database error says, without SQLAlchemy's statement and help link."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return f"{type(original or exc).__name__}: {text}" if text else type(original or exc).__name__


def sqlite_file_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"sqlite:///{path.expanduser().absolute()}"


def create_store_engine(url: str) -> Engine:
    """An engine on ``url``. SQLite gets WAL + ``synchronous=FULL`` (every commit is on disk
    before it returns), a busy timeout (several processes may write) and foreign keys, and
    write transactions start with ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks)."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL {safe_url(url)}: {exc}") from None
    try:
        if parsed.get_backend_name() != "sqlite":
            return sa.create_engine(parsed, pool_pre_ping=True)
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot use the database {safe_url(url)}: {reason(exc)}") from None
    except OSError as exc:
        raise StoreError(f"cannot create the database folder for {safe_url(url)}: {exc}") from None

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event emits BEGIN
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions write (on SQLite they take the write lock first)."""
    with engine.connect() as connection:
        connection.execution_options(**{_WRITE: True})
        yield connection


# --------------------------------------------------------------------------- group commit

_Job = tuple[Callable[[Connection], Any], "Future[Any]"]


class _GroupWriter:
    """One thread that owns all writes: it takes every job queued, runs them in ONE
    transaction, commits, then resolves each job's future. When the group's transaction
    fails, each job is retried in its own, so one bad job fails only its caller."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Connection], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise StoreClosedError("the prediction store is closed")
            self._queue.put((work, future))
        return future

    def close(self) -> None:
        """Run what is queued, then stop the thread (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            group: list[_Job] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while len(group) < MAX_GROUP:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                else:
                    group.append(job)
            live = [job for job in group if job[1].set_running_or_notify_cancel()]
            if live:
                self._commit(live)

    def _commit(self, group: list[_Job]) -> None:
        try:
            results = self._transaction(group)
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(_store_error(exc))
                return
            logger.debug("group of %d writes failed (%s); retrying one by one", len(group), exc)
            for job in group:
                try:
                    (result,) = self._transaction([job])
                except Exception as single:
                    job[1].set_exception(_store_error(single))
                else:
                    job[1].set_result(result)
            return
        for (_work, future), result in zip(group, results, strict=True):
            future.set_result(result)

    def _transaction(self, group: list[_Job]) -> list[Any]:
        """Run ``group`` in one transaction. A job's :class:`ClipHarError` (an unknown
        prediction; jobs raise one only before they write) is its result to raise, not a
        failure of the group; any other error rolls the whole group back."""
        results: list[Any] = []
        with write_connection(self._engine) as connection, connection.begin():
            for work, _future in group:
                try:
                    results.append(work(connection))
                except ClipHarError as exc:
                    results.append(_Failure(exc))
        return results


@dataclass(frozen=True)
class _Failure:
    """A job's own error, raised to its caller after the group committed."""

    error: ClipHarError


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, ClipHarError):
        return exc
    return StoreError(f"the prediction store could not write: {reason(exc)}")


async def _await(future: Future[Any]) -> Any:
    result = await asyncio.wrap_future(future)
    if isinstance(result, _Failure):
        raise result.error
    return result


# --------------------------------------------------------------------------- the store


class PredictionStore:
    """The prediction log and feedback store on a SQLAlchemy ``url``; ``images_dir`` (opt-in)
    keeps uploads content-addressed for :func:`export_feedback`."""

    def __init__(self, url: str, *, images_dir: Path | None = None) -> None:
        self.url = url
        self.images_dir = images_dir
        self._engine = create_store_engine(url)
        try:
            with write_connection(self._engine) as connection, connection.begin():
                metadata.create_all(connection)  # checks and creates under the write lock
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(f"cannot open the database {safe_url(url)}: {reason(exc)}") from None
        self._writer = _GroupWriter(self._engine, name="clip-har-store-writer")
        self._closed = False
        logger.info("prediction store: %s", safe_url(url))

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> PredictionStore:
        """The store ``clip-har serve`` uses: ``database_url`` and ``store_images``."""
        return cls(settings.database_url, images_dir=settings.store_images)

    @property
    def engine(self) -> Engine:
        """The engine (for reads and maintenance; writes go through the store)."""
        return self._engine

    # ----------------------------------------------------------------- writes

    async def log_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Log ``records``; returns once they are committed (durable)."""
        if not records:
            return
        rows = [_prediction_row(record) for record in records]

        def work(connection: Connection) -> None:
            connection.execute(predictions.insert(), rows)

        await _await(self._writer.submit(work))

    async def add_feedback(
        self,
        prediction_id: str,
        *,
        correct: bool,
        label: str | None = None,
        comment: str | None = None,
    ) -> FeedbackRecord:
        """Record feedback on a logged prediction; returns once committed.

        Raises :class:`UnknownPredictionError` for an id never logged and
        :class:`InvalidFeedbackError` when ``correct`` contradicts ``label``.
        """
        created = datetime.now(timezone.utc)
        feedback_id = uuid.uuid4().hex

        def work(connection: Connection) -> FeedbackRecord:
            predicted = connection.execute(
                sa.select(predictions.c.label).where(predictions.c.id == prediction_id)
            ).scalar_one_or_none()
            if predicted is None:
                raise UnknownPredictionError(prediction_id)
            right = _right_label(predicted, correct=correct, label=label)
            record = FeedbackRecord(feedback_id, prediction_id, created, correct, right, comment)
            connection.execute(
                feedback.insert(),
                {
                    "id": record.id,
                    "prediction_id": prediction_id,
                    "created_at": created,
                    "correct": correct,
                    "label": right,
                    "comment": comment,
                },
            )
            return record

        found: FeedbackRecord = await _await(self._writer.submit(work))
        return found

    def store_image(self, data: bytes) -> str | None:
        """Keep ``data`` under ``images_dir/ab/<sha256>.<ext>`` (written atomically and
        flushed to disk; the same bytes twice make one file); its sha256, or ``None`` when
        images are not stored."""
        if self.images_dir is None:
            return None
        digest = hashlib.sha256(data).hexdigest()
        if find_image(self.images_dir, digest) is not None:
            return digest
        target = self.images_dir / digest[:2] / f"{digest}{image_extension(data)}"
        try:
            with atomic_write(target, durable=True, exclusive=True) as staging:
                staging.write_bytes(data)
        except FileExistsError:
            pass  # a concurrent request stored the same bytes
        return digest

    # ----------------------------------------------------------------- reads

    async def stats(self) -> FeedbackStats:
        """Counts and accuracy from the feedback (read in a worker thread)."""
        return await asyncio.to_thread(self.stats_now)

    def stats_now(self) -> FeedbackStats:
        """:meth:`stats`, blocking."""
        try:
            with self._engine.connect() as connection:
                return _read_stats(connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the prediction store: {reason(exc)}") from None

    async def prediction_stats(
        self,
        since: datetime,
        until: datetime,
        bucket_seconds: int,
        model_version: str | None = None,
    ) -> PredictionStats:
        """:func:`read_prediction_stats` in a worker thread."""
        return await asyncio.to_thread(
            self.prediction_stats_now, since, until, bucket_seconds, model_version
        )

    def prediction_stats_now(
        self,
        since: datetime,
        until: datetime,
        bucket_seconds: int,
        model_version: str | None = None,
    ) -> PredictionStats:
        """:meth:`prediction_stats`, blocking."""
        try:
            with self._engine.connect() as connection:
                return read_prediction_stats(
                    connection, since, until, bucket_seconds, model_version
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the prediction store: {reason(exc)}") from None

    async def latest_drift_scores(self) -> list[DriftScoreRecord]:
        """:func:`read_latest_drift_scores` in a worker thread."""
        return await asyncio.to_thread(self.latest_drift_scores_now)

    def latest_drift_scores_now(self) -> list[DriftScoreRecord]:
        """:meth:`latest_drift_scores`, blocking."""
        try:
            with self._engine.connect() as connection:
                return read_latest_drift_scores(connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the drift scores: {reason(exc)}") from None

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._engine.dispose()


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created_at": record.created_at,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "route": record.route,
        "label": record.label,
        "confidence": float(record.confidence),
        "top_k": [[str(name), float(p)] for name, p in record.top_k],
        "latency_ms": float(record.latency_ms),
        "image_sha256": record.image_sha256,
    }


def _right_label(predicted: str, *, correct: bool, label: str | None) -> str | None:
    """The right label of a prediction given its feedback (the predicted one when it was
    correct); a label that contradicts ``correct`` is an :class:`InvalidFeedbackError`."""
    if correct:
        if label is not None and label != predicted:
            raise InvalidFeedbackError(
                f"correct=true confirms the predicted label {predicted!r}, but label is "
                f"{label!r}; send correct=false to correct it"
            )
        return predicted
    if label is None:
        raise InvalidFeedbackError("correct=false needs the right label in 'label'")
    if label == predicted:
        raise InvalidFeedbackError(
            f"correct=false, but label {label!r} is the predicted label; send correct=true"
        )
    return label


def image_extension(data: bytes) -> str:
    """The file extension of image ``data`` from its first bytes (``.bin`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _IMAGE_MAGIC if data.startswith(magic)), ".bin")


def find_image(images_dir: Path, digest: str) -> Path | None:
    """The stored file of ``digest`` under ``images_dir``, if any."""
    folder = images_dir / digest[:2]
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.glob(f"{digest}.*")) if p.is_file()), None)


# --------------------------------------------------------------------------- stats and export


def _latest_feedback() -> sa.Subquery:
    """Each reviewed prediction with its latest feedback (ties: the larger feedback id)."""
    rank = (
        sa.func.row_number()
        .over(
            partition_by=feedback.c.prediction_id,
            order_by=(feedback.c.created_at.desc(), feedback.c.id.desc()),
        )
        .label("rank")
    )
    ranked = sa.select(
        feedback.c.prediction_id,
        feedback.c.created_at,
        feedback.c.correct,
        feedback.c.label.label("right_label"),
        rank,
    ).subquery("ranked")
    return (
        sa.select(
            ranked.c.prediction_id,
            ranked.c.created_at,
            ranked.c.correct,
            ranked.c.right_label,
            predictions.c.label,
            predictions.c.model_name,
            predictions.c.model_version,
            predictions.c.image_sha256,
        )
        .join(predictions, predictions.c.id == ranked.c.prediction_id)
        .where(ranked.c.rank == 1)
        .subquery("latest")
    )


def _read_stats(connection: Connection) -> FeedbackStats:
    latest = _latest_feedback()
    counts = (sa.func.count(), sa.func.sum(sa.case((latest.c.correct, 1), else_=0)))

    def group_stats(reviewed: int, good: int | None) -> GroupStats:
        good = int(good or 0)
        return GroupStats(reviewed, good, reviewed - good, _accuracy(good, reviewed))

    def grouped(*columns: sa.ColumnElement[Any]) -> list[tuple[Any, ...]]:
        query = sa.select(*columns, *counts).select_from(latest).group_by(*columns)
        return [tuple(row) for row in connection.execute(query.order_by(*columns))]

    total, good = connection.execute(sa.select(*counts).select_from(latest)).one()
    overall = group_stats(int(total), good)
    by_label = {str(row[0]): group_stats(int(row[1]), row[2]) for row in grouped(latest.c.label)}
    by_model = []
    for row in grouped(latest.c.model_name, latest.c.model_version):
        name, version = str(row[0]), str(row[1])
        group = group_stats(int(row[2]), row[3])
        by_model.append(
            ModelStats(
                name, version, group.reviewed, group.correct, group.incorrect, group.accuracy
            )
        )
    count_predictions = connection.execute(
        sa.select(sa.func.count()).select_from(predictions)
    ).scalar_one()
    count_feedback = connection.execute(
        sa.select(sa.func.count()).select_from(feedback)
    ).scalar_one()
    return FeedbackStats(
        predictions=int(count_predictions),
        feedback_rows=int(count_feedback),
        total=overall.reviewed,
        correct=overall.correct,
        incorrect=overall.incorrect,
        accuracy=overall.accuracy,
        by_label=by_label,
        by_model=by_model,
    )


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of sorted ``ordered``, interpolated linearly
    between the nearest ranks (numpy's default); ``None`` when empty."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _Tally:
    """Running counts of a group of predictions (a bucket, or the whole window)."""

    def __init__(self) -> None:
        self.labels: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.confidence = 0.0
        self.reviewed = 0
        self.correct = 0

    def add(self, label: str, confidence: float, latency_ms: float, verdict: bool | None) -> None:
        self.labels[label] += 1
        self.latencies.append(latency_ms)
        self.confidence += confidence
        if verdict is not None:
            self.reviewed += 1
            self.correct += int(verdict)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def latency(self) -> LatencySummary:
        ordered = sorted(self.latencies)
        return LatencySummary(
            percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99)
        )

    def mean_confidence(self) -> float | None:
        return self.confidence / self.count if self.count else None

    def by_label(self) -> dict[str, int]:
        return dict(sorted(self.labels.items()))

    def summary(self) -> dict[str, Any]:
        """The fields a :class:`StatsBucket` and :class:`PredictionStats` share."""
        return {
            "by_label": self.by_label(),
            "latency_ms": self.latency(),
            "mean_confidence": self.mean_confidence(),
            "reviewed": self.reviewed,
            "correct": self.correct,
            "accuracy": _accuracy(self.correct, self.reviewed),
        }


def read_prediction_stats(
    connection: Connection,
    since: datetime,
    until: datetime,
    bucket_seconds: int,
    model_version: str | None = None,
) -> PredictionStats:
    """Predictions logged in ``[since, until]`` (of ``model_version`` when given), overall
    and in buckets of ``bucket_seconds`` aligned on whole UTC multiples of it since the
    epoch: every bucket that overlaps the window is listed, empty ones with count 0.

    Portable (plain SQLAlchemy core, no dialect date functions): the window's rows
    (time, label, confidence, latency, latest feedback verdict) are read in time order and
    bucketed here. Cost: one indexed range scan plus a pass over all feedback rows (to find
    each prediction's latest feedback), and memory for one float per prediction of the
    window (the latency percentiles); callers bound the window (the route: 30 days).
    """
    if bucket_seconds <= 0:
        raise ValueError(f"bucket_seconds must be positive, got {bucket_seconds}")
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    if until < since:
        raise ValueError("until is before since")
    since, until = since.astimezone(timezone.utc), until.astimezone(timezone.utc)
    first = int(since.timestamp() // bucket_seconds) * bucket_seconds
    count = int(until.timestamp() // bucket_seconds) - first // bucket_seconds + 1
    latest = _latest_feedback()
    query = (
        sa.select(
            predictions.c.created_at,
            predictions.c.label,
            predictions.c.confidence,
            predictions.c.latency_ms,
            latest.c.correct,
        )
        .outerjoin(latest, latest.c.prediction_id == predictions.c.id)
        .where(predictions.c.created_at >= since, predictions.c.created_at <= until)
        .order_by(predictions.c.created_at)
    )
    if model_version is not None:
        query = query.where(predictions.c.model_version == model_version)
    overall = _Tally()
    tallies = [_Tally() for _ in range(count)]
    for created_at, label, confidence, latency_ms, verdict in connection.execute(query):
        index = int((created_at.timestamp() - first) // bucket_seconds)
        row = (str(label), float(confidence), float(latency_ms), verdict)
        tallies[min(max(index, 0), count - 1)].add(*row)
        overall.add(*row)
    buckets = [
        StatsBucket(
            start=datetime.fromtimestamp(first + i * bucket_seconds, timezone.utc),
            count=tally.count,
            **tally.summary(),
        )
        for i, tally in enumerate(tallies)
    ]
    return PredictionStats(
        since=since,
        until=until,
        bucket_seconds=bucket_seconds,
        model_version=model_version,
        total=overall.count,
        buckets=buckets,
        **overall.summary(),
    )


@dataclass(frozen=True)
class _Example:
    digest: str
    label: str
    path: Path


def _corrected_examples(
    connection: Connection, images_dir: Path | None
) -> tuple[list[_Example], int, int, int]:
    """One example per stored image (the latest feedback on any of its predictions wins),
    plus the counts of reviewed predictions, of those without an image, and of images
    corrected to different labels."""
    latest = _latest_feedback()
    query = sa.select(latest.c.image_sha256, latest.c.right_label, latest.c.label).order_by(
        latest.c.created_at, latest.c.prediction_id
    )
    reviewed = missing = 0
    chosen: dict[str, _Example] = {}
    seen_labels: dict[str, set[str]] = {}
    for digest, right_label, predicted in connection.execute(query):
        reviewed += 1
        label = right_label or predicted
        path = find_image(images_dir, digest) if images_dir is not None and digest else None
        if path is None:
            missing += 1
            continue
        chosen[digest] = _Example(digest, label, path)  # later rows replace earlier ones
        seen_labels.setdefault(digest, set()).add(label)
    conflicts = sum(len(labels) > 1 for labels in seen_labels.values())
    return list(chosen.values()), reviewed, missing, conflicts


def _open_for_export(source: PredictionStore | str) -> tuple[Engine, bool]:
    """An engine on an existing store (never creates a database); whether to dispose it."""
    if isinstance(source, PredictionStore):
        return source.engine, False
    parsed = sa.make_url(source) if "://" in source else None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or not Path(database).is_file():
            raise StoreError(f"no prediction store at {safe_url(source)} (no such database file)")
    engine = create_store_engine(source)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the database {safe_url(source)}: {reason(exc)}") from None
    if not {"predictions", "feedback"} <= tables:
        engine.dispose()
        raise StoreError(
            f"{safe_url(source)} holds no prediction log (tables predictions and feedback); "
            "is it the database of `clip-har serve`?"
        )
    return engine, True


def read_prediction_window(
    source: PredictionStore | str,
    since: datetime | None,
    until: datetime,
    *,
    limit: int | None = None,
) -> PredictionWindow:
    """The predictions logged in ``[since, until]`` (``since`` None: from the start), oldest
    first; with ``limit``, only the latest ``limit`` of them. Never creates a database."""
    if until.tzinfo is None or (since is not None and since.tzinfo is None):
        raise ValueError("since and until must be timezone-aware")
    columns = (
        predictions.c.label,
        predictions.c.confidence,
        predictions.c.image_sha256,
        predictions.c.model_version,
    )
    query = sa.select(*columns).where(predictions.c.created_at <= until)
    if since is not None:
        query = query.where(predictions.c.created_at >= since)
    query = query.order_by(predictions.c.created_at.desc(), predictions.c.id.desc())
    if limit is not None:
        query = query.limit(limit)
    engine, dispose = _open_for_export(source)
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(query))[::-1]
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the prediction store: {reason(exc)}") from None
    finally:
        if dispose:
            engine.dispose()
    return PredictionWindow(
        since=since,
        until=until,
        labels=[str(row[0]) for row in rows],
        confidences=[float(row[1]) for row in rows],
        image_sha256=[row[2] for row in rows],
        model_versions=[str(row[3]) for row in rows],
    )


def record_drift_scores(source: PredictionStore | str, scores: Sequence[DriftScoreRecord]) -> None:
    """Add ``scores`` (one monitor run) to the store's ``drift_scores`` table, creating the
    table in a log written by a server older than it. Never creates a database."""
    rows = [
        {
            "run_id": score.run_id,
            "created_at": score.created_at,
            "metric": score.metric,
            "value": float(score.value),
            "threshold": float(score.threshold),
            "drifted": bool(score.drifted),
            "reference_id": score.reference_id,
            "samples": int(score.samples),
            "since": score.since,
        }
        for score in scores
    ]
    if not rows:
        return
    engine, dispose = _open_for_export(source)
    try:
        with write_connection(engine) as connection, connection.begin():
            drift_scores.create(connection, checkfirst=True)
            connection.execute(drift_scores.insert(), rows)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record the drift scores: {reason(exc)}") from None
    finally:
        if dispose:
            engine.dispose()


def read_latest_drift_scores(connection: Connection) -> list[DriftScoreRecord]:
    """The latest score of each metric (ties: the later row), by metric name."""
    rank = (
        sa.func.row_number()
        .over(
            partition_by=drift_scores.c.metric,
            order_by=(drift_scores.c.created_at.desc(), drift_scores.c.id.desc()),
        )
        .label("rank")
    )
    ranked = sa.select(drift_scores, rank).subquery("ranked")
    query = sa.select(ranked).where(ranked.c.rank == 1).order_by(ranked.c.metric)
    return [
        DriftScoreRecord(
            run_id=row.run_id,
            created_at=row.created_at,
            metric=row.metric,
            value=float(row.value),
            threshold=float(row.threshold),
            drifted=bool(row.drifted),
            reference_id=row.reference_id,
            samples=int(row.samples),
            since=row.since,
        )
        for row in connection.execute(query)
    ]


def export_feedback(
    source: PredictionStore | str, images_dir: Path | None, out_dir: Path
) -> ExportSummary:
    """Write the corrected examples to ``out_dir`` as ``labels.csv`` (``filename,label``
    plus provenance columns) and ``images/<sha256>.<ext>``: the layout ``clip-har data
    import`` accepts. The corrected label is the feedback's label when the prediction was
    wrong, the predicted one when it was right; the latest feedback wins.

    ``out_dir`` is replaced whole (the caller checks it may be); predictions without a
    stored image are counted in :attr:`ExportSummary.missing_images`. Raises
    :class:`StoreError` when there is nothing to export.
    """
    engine, dispose = _open_for_export(source)
    try:
        with engine.connect() as connection:
            examples, reviewed, missing, conflicts = _corrected_examples(connection, images_dir)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the prediction store: {reason(exc)}") from None
    finally:
        if dispose:
            engine.dispose()
    if not examples:
        raise StoreError(
            "nothing to export: "
            + (missing_images_hint(missing) if reviewed else "the store holds no feedback")
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label", "sha256"])
    with publish_directory(out_dir) as staging:
        (staging / IMAGES_FOLDER).mkdir()
        for example in examples:
            name = f"{example.digest}{example.path.suffix}"
            shutil.copyfile(example.path, staging / IMAGES_FOLDER / name)
            writer.writerow([name, example.label, example.digest])
        write_text_atomic(staging / LABELS_CSV, buffer.getvalue())
    labels = Counter(example.label for example in examples)
    return ExportSummary(
        out_dir=out_dir,
        rows=len(examples),
        labels=dict(sorted(labels.items())),
        reviewed=reviewed,
        missing_images=missing,
        conflicts=conflicts,
    )


def missing_images_hint(missing: int) -> str:
    """The message for feedback rows whose image was not stored."""
    rows = "feedback row has" if missing == 1 else "feedback rows have"
    return f"{missing} {rows} no stored image: serve with --store-images"
