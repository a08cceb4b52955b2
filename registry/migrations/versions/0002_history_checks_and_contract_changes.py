"""history records archives and unchecked moves; versions record allowed contract changes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        # An archive is an event of a version, not of an alias.
        batch_op.alter_column('alias', existing_type=sa.String(length=100), nullable=True)
        batch_op.add_column(sa.Column('checked', sa.Boolean(), nullable=True))
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contract_change', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('contract_change')
    op.execute("DELETE FROM alias_history WHERE alias IS NULL")
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.drop_column('checked')
        batch_op.alter_column('alias', existing_type=sa.String(length=100), nullable=False)
