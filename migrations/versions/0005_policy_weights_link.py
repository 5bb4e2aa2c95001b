"""A threshold names the 1C-Sum weights that belong to it: the two are one policy.

`thresholds.summary_weights_id` links each threshold to the weights it is applied with, so the
stream reads both in one query and scores and judges a batch by the same policy version.

Existing rows: the active threshold of each model and indicator gets the model's active weights
(what the stream applied together until now); any other threshold gets the weights its fit
recorded (its proposal's `summary_weights_id`, else `parameters.summary_weights_id`) when they
are still stored, else the newest weights of its model stored no later than it. Thresholds of models without weights keep NULL (uniform).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import json
from typing import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('thresholds') as batch:
        batch.add_column(sa.Column('summary_weights_id', sa.Integer(), nullable=True))
        batch.create_foreign_key('fk_thresholds_summary_weights_id_summary_weights', 'summary_weights',
                                 ['summary_weights_id'], ['id'])

    connection = op.get_bind()
    thresholds = sa.table('thresholds', sa.column('id', sa.Integer), sa.column('model_id', sa.Integer),
                          sa.column('active', sa.Boolean), sa.column('created_at'),
                          sa.column('parameters'), sa.column('summary_weights_id', sa.Integer))
    weights = sa.table('summary_weights', sa.column('id', sa.Integer), sa.column('model_id', sa.Integer),
                       sa.column('active', sa.Boolean), sa.column('created_at'))
    stored = {row.id: row.model_id for row in connection.execute(sa.select(weights.c.id, weights.c.model_id))}
    active = {row.model_id: row.id for row in connection.execute(
        sa.select(weights.c.id, weights.c.model_id).where(weights.c.active.is_(True)))}
    proposals = sa.table('threshold_proposals', sa.column('threshold_id', sa.Integer),
                         sa.column('summary_weights_id', sa.Integer))
    proposed = {row.threshold_id: row.summary_weights_id for row in connection.execute(
        sa.select(proposals.c.threshold_id, proposals.c.summary_weights_id)
        .where(proposals.c.summary_weights_id.is_not(None)))}
    history = sorted(connection.execute(sa.select(weights.c.id, weights.c.model_id, weights.c.created_at)),
                     key=lambda row: (row.created_at, row.id))
    links = []
    for row in connection.execute(sa.select(thresholds.c.id, thresholds.c.model_id, thresholds.c.active,
                                            thresholds.c.created_at, thresholds.c.parameters)):
        if row.active:
            link = active.get(row.model_id)
        else:
            parameters = json.loads(row.parameters) if isinstance(row.parameters, str) else (row.parameters or {})
            recorded = proposed.get(row.id, parameters.get('summary_weights_id'))
            if recorded in stored and stored[recorded] == row.model_id:
                link = recorded
            else:
                earlier = [w.id for w in history if w.model_id == row.model_id and w.created_at <= row.created_at]
                link = earlier[-1] if earlier else None
        if link is not None:
            links.append({'threshold_id': row.id, 'link': link})
    if links:
        connection.execute(thresholds.update().where(thresholds.c.id == sa.bindparam('threshold_id'))
                           .values(summary_weights_id=sa.bindparam('link')), links)


def downgrade() -> None:
    with op.batch_alter_table('thresholds') as batch:
        batch.drop_constraint('fk_thresholds_summary_weights_id_summary_weights', type_='foreignkey')
        batch.drop_column('summary_weights_id')
