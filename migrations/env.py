"""Alembic environment: the URL comes from the service's settings unless the caller gives one."""

from alembic import context
from sqlalchemy import create_engine, pool

from provisioning import models  # noqa: F401  (registers the tables on Base.metadata)
from provisioning.platform.db import Base
from provisioning.platform.settings import settings_or_exit
from provisioning.webhooks import models as webhook_models  # noqa: F401  (and the webhooks')

config = context.config
database_url = config.get_main_option("sqlalchemy.url") or settings_or_exit().database_url


def run_migrations_online() -> None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite (the quickstart) can only alter tables by copying them.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `provisioning db upgrade`")
run_migrations_online()
