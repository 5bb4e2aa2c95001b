"""Initial schema: models, calibrations, scored samples, images, labels, thresholds,
summary weights, alerts, rejects, reports, job runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 64-bit keys on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('payload', JSON_DOCUMENT, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('published_at', TIMESTAMP, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index('ix_alerts_created_at', 'alerts', ['created_at'], unique=False)
    op.create_index('ix_alerts_published_at_id', 'alerts', ['published_at', 'id'], unique=False)

    op.create_table('calibrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('stats', JSON_DOCUMENT, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibrations')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_calibrations_fingerprint'))
    )
    op.create_table('job_runs',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('started_at', TIMESTAMP, nullable=False),
    sa.Column('finished_at', TIMESTAMP, nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("outcome IN ('running', 'ok', 'failed', 'skipped')", name=op.f('ck_job_runs_outcome_value')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs'))
    )
    op.create_index('ix_job_runs_job_started', 'job_runs', ['job', 'started_at'], unique=False)

    op.create_table('monitored_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('preprocessing', JSON_DOCUMENT, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_monitored_models')),
    sa.UniqueConstraint('name', 'fingerprint', name=op.f('uq_monitored_models_name_fingerprint'))
    )
    op.create_table('rejects',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('source_topic', sa.String(length=255), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', BIG_ID, nullable=False),
    sa.Column('sample_key', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('size', BIG_ID, nullable=False),
    sa.Column('received_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejects')),
    sa.UniqueConstraint('source_topic', 'source_partition', 'source_offset', name=op.f('uq_rejects_source_topic_source_partition_source_offset'))
    )
    op.create_index('ix_rejects_received_at', 'rejects', ['received_at'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('period_start', TIMESTAMP, nullable=False),
    sa.Column('period_end', TIMESTAMP, nullable=False),
    sa.Column('summary', JSON_DOCUMENT, nullable=False),
    sa.Column('file_path', sa.Text(), nullable=True),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports'))
    )
    op.create_index('ix_reports_created_at', 'reports', ['created_at'], unique=False)

    op.create_table('summary_weights',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('weights', JSON_DOCUMENT, nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['monitored_models.id'], name=op.f('fk_summary_weights_model_id_monitored_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_summary_weights'))
    )
    op.create_index('uq_summary_weights_one_active', 'summary_weights', ['model_id'], unique=True, postgresql_where=sa.text('active'), sqlite_where=sa.text('active'))

    op.create_table('thresholds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('indicator', sa.String(length=32), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('parameters', JSON_DOCUMENT, nullable=False),
    sa.Column('window_start', TIMESTAMP, nullable=True),
    sa.Column('window_end', TIMESTAMP, nullable=True),
    sa.Column('counts', JSON_DOCUMENT, nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', TIMESTAMP, nullable=False),
    sa.Column('fitted_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['monitored_models.id'], name=op.f('fk_thresholds_model_id_monitored_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_thresholds'))
    )
    op.create_index('ix_thresholds_model_indicator_created', 'thresholds', ['model_id', 'indicator', 'created_at'], unique=False)
    op.create_index('uq_thresholds_one_active', 'thresholds', ['model_id', 'indicator'], unique=True, postgresql_where=sa.text('active'), sqlite_where=sa.text('active'))

    op.create_table('samples',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('source_topic', sa.String(length=255), nullable=False),
    sa.Column('source_partition', sa.Integer(), nullable=False),
    sa.Column('source_offset', BIG_ID, nullable=False),
    sa.Column('sample_key', sa.String(length=255), nullable=False),
    sa.Column('produced_at', TIMESTAMP, nullable=True),
    sa.Column('received_at', TIMESTAMP, nullable=False),
    sa.Column('scored_at', TIMESTAMP, nullable=False),
    sa.Column('predicted_class', sa.Integer(), nullable=False),
    sa.Column('mp', sa.Float(), nullable=True),
    sa.Column('h', sa.Float(), nullable=True),
    sa.Column('t1000', sa.Float(), nullable=True),
    sa.Column('odin', sa.Float(), nullable=True),
    sa.Column('norm', sa.Float(), nullable=True),
    sa.Column('norm_p', sa.Float(), nullable=True),
    sa.Column('ang', sa.Float(), nullable=True),
    sa.Column('ang_pp', sa.Float(), nullable=True),
    sa.Column('proj', sa.Float(), nullable=True),
    sa.Column('act', sa.Float(), nullable=True),
    sa.Column('act_p', sa.Float(), nullable=True),
    sa.Column('in_dms', sa.Float(), nullable=True),
    sa.Column('in_dms_aos', sa.Float(), nullable=True),
    sa.Column('in_dss', sa.Float(), nullable=True),
    sa.Column('in_dss_ext', sa.Float(), nullable=True),
    sa.Column('dms', sa.Float(), nullable=True),
    sa.Column('dms_aos', sa.Float(), nullable=True),
    sa.Column('dss', sa.Float(), nullable=True),
    sa.Column('dss_ext', sa.Float(), nullable=True),
    sa.Column('one_c_sum', sa.Float(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('score_indicator', sa.String(length=32), nullable=True),
    sa.Column('flagged', sa.Boolean(), nullable=False),
    sa.Column('threshold_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['monitored_models.id'], name=op.f('fk_samples_model_id_monitored_models')),
    sa.ForeignKeyConstraint(['threshold_id'], ['thresholds.id'], name=op.f('fk_samples_threshold_id_thresholds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_samples')),
    sa.UniqueConstraint('source_topic', 'source_partition', 'source_offset', name=op.f('uq_samples_source_topic_source_partition_source_offset'))
    )
    op.create_index('ix_samples_model_flagged_scored', 'samples', ['model_id', 'flagged', 'scored_at'], unique=False)
    op.create_index('ix_samples_model_scored', 'samples', ['model_id', 'scored_at'], unique=False)
    op.create_index('ix_samples_sample_key', 'samples', ['sample_key'], unique=False)
    op.create_index('ix_samples_scored_at', 'samples', ['scored_at'], unique=False)

    op.create_table('labels',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('sample_id', BIG_ID, nullable=False),
    sa.Column('label', sa.String(length=3), nullable=False),
    sa.Column('labelled_by', sa.String(length=200), nullable=False),
    sa.Column('labelled_at', TIMESTAMP, nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.CheckConstraint("label IN ('ID', 'OOD')", name=op.f('ck_labels_label_value')),
    sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], name=op.f('fk_labels_sample_id_samples'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels'))
    )
    op.create_index('ix_labels_labelled_at', 'labels', ['labelled_at'], unique=False)
    op.create_index('ix_labels_sample_id_id', 'labels', ['sample_id', 'id'], unique=False)

    op.create_table('sample_images',
    sa.Column('sample_id', BIG_ID, nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('stored_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], name=op.f('fk_sample_images_sample_id_samples'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sample_id', name=op.f('pk_sample_images'))
    )



def downgrade() -> None:

    op.drop_table('sample_images')
    op.drop_index('ix_labels_sample_id_id', table_name='labels')
    op.drop_index('ix_labels_labelled_at', table_name='labels')

    op.drop_table('labels')
    op.drop_index('ix_samples_scored_at', table_name='samples')
    op.drop_index('ix_samples_sample_key', table_name='samples')
    op.drop_index('ix_samples_model_scored', table_name='samples')
    op.drop_index('ix_samples_model_flagged_scored', table_name='samples')

    op.drop_table('samples')
    op.drop_index('uq_thresholds_one_active', table_name='thresholds')
    op.drop_index('ix_thresholds_model_indicator_created', table_name='thresholds')

    op.drop_table('thresholds')
    op.drop_index('uq_summary_weights_one_active', table_name='summary_weights')

    op.drop_table('summary_weights')
    op.drop_index('ix_reports_created_at', table_name='reports')

    op.drop_table('reports')
    op.drop_index('ix_rejects_received_at', table_name='rejects')

    op.drop_table('rejects')
    op.drop_table('monitored_models')
    op.drop_index('ix_job_runs_job_started', table_name='job_runs')

    op.drop_table('job_runs')
    op.drop_table('calibrations')
    op.drop_index('ix_alerts_published_at_id', table_name='alerts')
    op.drop_index('ix_alerts_created_at', table_name='alerts')

    op.drop_table('alerts')
