"""Labels may be cleared: a label row without a value makes its sample unlabelled again.

Undoing a sample's first label appends such a row, so the history keeps every change and the
current label (the latest row) is "none".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = 'ck_labels_label_value'


def upgrade() -> None:
    with op.batch_alter_table('labels') as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_='check')
        batch.alter_column('label', existing_type=sa.String(length=3), nullable=True)
        batch.create_check_constraint(op.f(CONSTRAINT), "label IS NULL OR label IN ('ID', 'OOD')")


def downgrade() -> None:
    # The older schema cannot say "cleared": those history rows go, the labels before them stay.
    op.execute("DELETE FROM labels WHERE label IS NULL")
    with op.batch_alter_table('labels') as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_='check')
        batch.alter_column('label', existing_type=sa.String(length=3), nullable=False)
        batch.create_check_constraint(op.f(CONSTRAINT), "label IN ('ID', 'OOD')")
