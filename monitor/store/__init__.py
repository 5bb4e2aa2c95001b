"""Persistence: SQLite by default, PostgreSQL for deployments; Alembic owns the schema.

    from monitor.store import Store, ScoredSample
    store = Store.open("sqlite:///var/ood-monitor.db")   # refuses an out-of-date schema
    result = store.write(samples=[...], rejects=[...])    # one transaction, replays skipped

See docs/storage.md.
"""

from monitor.store.engine import DEFAULT_URL, URL_ENVIRONMENT_VARIABLE, connect, resolve_url
from monitor.store.migrate import ensure_schema_current, upgrade
from monitor.store.records import (
    LABEL_ID,
    LABEL_OOD,
    UNLABELLED,
    AlertRow,
    ImageBlob,
    JobRunRow,
    LabelRow,
    ModelRow,
    Judgement,
    Policy,
    PurgeResult,
    Histogram,
    QueuePage,
    QueueQuery,
    RateBucket,
    RejectRecord,
    ReportRow,
    RetentionPolicy,
    SampleDetail,
    SampleSummary,
    ScoredSample,
    SourcePosition,
    StoredImage,
    ThresholdRecord,
    ThresholdRow,
    WindowCounts,
    WindowScores,
    WriteResult,
)
from monitor.store.labels import LabelConflict
from monitor.store.store import Store, StoreError
from monitor.store.windows import FlaggedCount, IndicatorWindow, TopSample

__all__ = [
    "DEFAULT_URL",
    "FlaggedCount",
    "IndicatorWindow",
    "TopSample",
    "URL_ENVIRONMENT_VARIABLE",
    "LABEL_ID",
    "LABEL_OOD",
    "UNLABELLED",
    "AlertRow",
    "ImageBlob",
    "JobRunRow",
    "LabelRow",
    "ModelRow",
    "Judgement",
    "Policy",
    "PurgeResult",
    "Histogram",
    "LabelConflict",
    "QueuePage",
    "QueueQuery",
    "RateBucket",
    "RejectRecord",
    "ReportRow",
    "RetentionPolicy",
    "SampleDetail",
    "SampleSummary",
    "ScoredSample",
    "SourcePosition",
    "Store",
    "StoreError",
    "StoredImage",
    "ThresholdRecord",
    "ThresholdRow",
    "WindowCounts",
    "WindowScores",
    "WriteResult",
    "connect",
    "ensure_schema_current",
    "resolve_url",
    "upgrade",
]
