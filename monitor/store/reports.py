"""Drift reports: the row of each report the report job wrote, newest first.

Mixed into `monitor.store.Store`, which supplies the engine and the transactions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select

from monitor.clock import utc_now
from monitor.errors import InputError
from monitor.store.models import Report
from monitor.store.payloads import ReportSummary
from monitor.store.records import ReportRow


class ReportsAggregate:
    """The report reads and writes of `monitor.store.Store`."""

    def add_report(
        self, period_start: datetime, period_end: datetime, summary: ReportSummary, file_path: str | None = None
    ) -> ReportRow:
        if period_end < period_start:
            raise InputError(f"report: period_end {period_end} is before period_start {period_start}")
        with self._writing() as connection:
            row = connection.execute(
                insert(Report).returning(*Report.__table__.c),
                [
                    {
                        "period_start": period_start,
                        "period_end": period_end,
                        "summary": summary,
                        "file_path": file_path,
                        "created_at": utc_now(),
                    }
                ],
            ).one()
        return ReportRow(**row._mapping)

    def list_reports(self, *, limit: int = 50, offset: int = 0) -> list[ReportRow]:
        """Reports, newest first; `limit` and `offset` page through them."""
        statement = (select(Report.__table__).order_by(Report.created_at.desc(), Report.id.desc())
                     .limit(limit).offset(offset))
        with self._reading() as connection:
            rows = connection.execute(statement)
            return [ReportRow(**row._mapping) for row in rows]

    def get_report(self, report_id: int) -> ReportRow | None:
        with self._reading() as connection:
            row = connection.execute(select(Report.__table__).where(Report.id == report_id)).first()
        return ReportRow(**row._mapping) if row else None
