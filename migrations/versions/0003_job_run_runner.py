"""A job run names the process that ran it.

With several daemons on one database the scheduled jobs run on whichever holds the job's lock;
`runner` ("host:pid") says which one, so a failed run's log is found on the right machine.
Runs stored before this revision keep no runner (NULL).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('job_runs') as batch:
        batch.add_column(sa.Column('runner', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job_runs') as batch:
        batch.drop_column('runner')
