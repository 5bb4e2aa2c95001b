"""Threshold proposals: a re-fit that waits for an admin's approval, with its shadow evaluation.

The proposed threshold (and its 1C-Sum weights, when re-fitted) are stored inactive in their own
tables; a proposal row points at them and keeps the decision (who, when, note). At most one
proposal waits per model and indicator.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'threshold_proposals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('indicator', sa.String(length=32), nullable=False),
        sa.Column('threshold_id', sa.Integer(), nullable=False),
        sa.Column('summary_weights_id', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('evaluation', JSON_DOCUMENT, nullable=False),
        sa.Column('proposed_by', sa.String(length=200), nullable=False),
        sa.Column('created_at', TIMESTAMP, nullable=False),
        sa.Column('expires_at', TIMESTAMP, nullable=False),
        sa.Column('decided_at', TIMESTAMP, nullable=True),
        sa.Column('decided_by', sa.String(length=200), nullable=True),
        sa.Column('decision_note', sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('waiting', 'approved', 'rejected', 'expired')",
                           name=op.f('ck_threshold_proposals_status_value')),
        sa.ForeignKeyConstraint(['model_id'], ['monitored_models.id'],
                                name=op.f('fk_threshold_proposals_model_id_monitored_models')),
        sa.ForeignKeyConstraint(['threshold_id'], ['thresholds.id'],
                                name=op.f('fk_threshold_proposals_threshold_id_thresholds')),
        sa.ForeignKeyConstraint(['summary_weights_id'], ['summary_weights.id'],
                                name=op.f('fk_threshold_proposals_summary_weights_id_summary_weights')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_threshold_proposals')),
    )
    op.create_index('ix_threshold_proposals_model_created', 'threshold_proposals', ['model_id', 'created_at'])
    op.create_index('uq_threshold_proposals_one_waiting', 'threshold_proposals', ['model_id', 'indicator'],
                    unique=True, postgresql_where=sa.text("status = 'waiting'"),
                    sqlite_where=sa.text("status = 'waiting'"))


def downgrade() -> None:
    op.drop_index('uq_threshold_proposals_one_waiting', table_name='threshold_proposals')
    op.drop_index('ix_threshold_proposals_model_created', table_name='threshold_proposals')
    op.drop_table('threshold_proposals')
