"""A threshold may carry own thresholds for predicted classes: `thresholds.class_thresholds`.

With `[thresholds] per_class` the re-fit stores, beside the global threshold in `value`, the
own threshold of each predicted class that had enough samples (ClassThresholdsDocument), in the
same row: one policy version judges every sample by its predicted class's threshold. NULL (every
existing row): the global threshold judges every class.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table('thresholds') as batch:
        batch.add_column(sa.Column('class_thresholds', JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('thresholds') as batch:
        batch.drop_column('class_thresholds')
