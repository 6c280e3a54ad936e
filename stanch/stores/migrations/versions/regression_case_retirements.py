"""Retiring a regression case: who retired which case, when, and why.

A retired case no longer guards later changes (the regression gate and verification skip it),
but it stays in `regression_cases` beside its retirement, so the record of why it was dropped
is kept with the case it dropped.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regression_case_retirements",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("retired_by", sa.Text, nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "case_id", name="pk_regression_case_retirements"),
    )


def downgrade() -> None:
    op.drop_table("regression_case_retirements")
