"""`stanch db upgrade`: bring the records database's schema to the newest revision.

The records database (STANCH_DATABASE_URL, else SQLite at HOME/stanch.db) holds the regression
suite and the notification deliveries; see stanch.stores.records. A worker upgrades it as it
starts, so this command is for doing it ahead of a rollout, or to check what a URL points at.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from stanch.cli.output import make_console
from stanch.config.settings import Settings
from stanch.stores.records import Records, RecordsError

db_app = typer.Typer(help="The records database (regression suite, notification deliveries): schema migrations.", no_args_is_help=True)
console = make_console()
errors = make_console(stderr=True)


@db_app.command("upgrade")
def upgrade() -> None:
    """Upgrade the records database to the newest schema; says from which revision, or that it was there already.

    Safe while workers run or start: on PostgreSQL the upgrade holds an advisory lock, on SQLite
    the write lock, so two upgrades never run at once.
    """
    try:
        records = Records.from_settings(Settings.from_env())
        done = records.upgrade()
    except RecordsError as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(1) from None
    records.dispose()
    console.print(done.describe(), markup=False, highlight=False)
