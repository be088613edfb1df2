"""The batching psycopg2 connection: fewer round trips, and every transaction exactly as before."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, event, insert, select, text
from sqlalchemy.exc import IntegrityError

from provisioning.enums import JobStatus, JobType
from provisioning.jobs.runner import JobRunner
from provisioning.jobs.service import ProvisioningService
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobEvent
from provisioning.platform.db import get_engine
from provisioning.platform.pg_batching import execute_later
from provisioning.sites.drivers.simulated import SimulatedDriver

PROBE = Table("batching_probe", MetaData(), Column("n", Integer, primary_key=True, autoincrement=False))
ADD = insert(PROBE)


@pytest.fixture
def engine(database_url):
    engine = get_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS batching_probe (n integer PRIMARY KEY)"))
        connection.execute(text("TRUNCATE batching_probe"))
    return engine


def stored(engine) -> list[int]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT n FROM batching_probe ORDER BY n")))


def round_trips(connection) -> int:
    return connection.connection.dbapi_connection.round_trips


def test_begin_goes_with_the_first_statement_and_deferred_ones_with_the_commit(engine):
    with engine.connect() as connection:
        before = round_trips(connection)
        connection.execute(ADD, {"n": 1})
        execute_later(connection, ADD, {"n": 2})
        execute_later(connection, ADD, [{"n": 3}, {"n": 4}])
        connection.commit()
        assert round_trips(connection) - before == 2
    assert stored(engine) == [1, 2, 3, 4]


def test_a_deferred_statement_goes_with_the_next_one_which_sees_its_effect(engine):
    with engine.connect() as connection:
        before = round_trips(connection)
        execute_later(connection, ADD, {"n": 1})
        assert connection.scalar(text("SELECT count(*) FROM batching_probe")) == 1
        assert round_trips(connection) - before == 1
        connection.rollback()
    assert stored(engine) == []


def test_a_rollback_forgets_deferred_statements_and_undoes_the_rest(engine):
    with engine.connect() as connection:
        connection.execute(ADD, {"n": 1})
        execute_later(connection, ADD, {"n": 2})
        connection.rollback()
        execute_later(connection, ADD, {"n": 3})
        connection.commit()
    assert stored(engine) == [3]


def test_a_failing_deferred_statement_fails_the_commit_and_nothing_of_its_transaction_stays(engine):
    with engine.connect() as connection:
        connection.execute(ADD, {"n": 1})
        execute_later(connection, ADD, {"n": 1})  # a duplicate key, raised by the next round trip
        with pytest.raises(IntegrityError):
            connection.commit()
        connection.rollback()  # as after any failed commit
        connection.execute(ADD, {"n": 2})  # the connection is fine for the next transaction
        connection.commit()
    assert stored(engine) == [2]


def test_a_statement_whose_result_is_read_cannot_wait(engine):
    returning = insert(PROBE).values(n=bindparam("n")).returning(PROBE.c.n)
    with engine.connect() as connection, pytest.raises(ValueError, match="cannot wait"):
        execute_later(connection, returning, {"n": 7})


def test_an_update_waits_too_and_each_of_its_rows_is_written(engine):
    bump = PROBE.update().where(PROBE.c.n == bindparam("old")).values(n=bindparam("new"))
    with engine.connect() as connection:
        connection.execute(ADD, [{"n": 1}, {"n": 2}])
        before = round_trips(connection)
        execute_later(connection, bump, [{"old": 1, "new": 10}, {"old": 2, "new": 20}])
        connection.commit()
        assert round_trips(connection) - before == 1
    assert stored(engine) == [10, 20]


def test_autocommit_when_asked_runs_each_statement_at_once_and_on_its_own(engine):
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM batching_probe"))  # refused inside a transaction
        execute_later(connection, ADD, {"n": 1})
        connection.rollback()  # nothing to undo: it was committed by itself
    assert stored(engine) == [1]
    with engine.connect() as connection:  # the pool's connection is transactional again
        connection.execute(ADD, {"n": 2})
        connection.rollback()
    assert stored(engine) == [1]


def test_a_connection_given_back_mid_transaction_is_rolled_back(engine):
    connection = engine.connect()
    connection.execute(ADD, {"n": 1})
    execute_later(connection, ADD, {"n": 2})
    connection.close()  # without a commit
    with engine.connect() as again:
        assert again.scalar(text("SELECT count(*) FROM batching_probe")) == 0
        assert again.connection.dbapi_connection.info.transaction_status in (0, 2)  # idle, or in a transaction of its own
    assert stored(engine) == []


def test_a_savepoint_rolled_back_undoes_the_deferred_statements_made_inside_it(engine):
    with engine.connect() as connection:
        execute_later(connection, ADD, {"n": 1})
        savepoint = connection.begin_nested()
        execute_later(connection, ADD, {"n": 2})
        savepoint.rollback()
        execute_later(connection, ADD, {"n": 3})
        connection.commit()
    assert stored(engine) == [1, 3]


def test_a_job_of_quick_steps_costs_two_round_trips_a_step_and_two_more(session, sessions, settings, tenant_factory):
    runner = JobRunner.for_settings(settings, sessions, SimulatedDriver(step_seconds=0), "w@test pid 1")
    warm_up, measured = (ProvisioningService(session).request_job(tenant_factory.create().id, JobType.CREATE_SITE)
                         for _ in range(2))  # fmt: skip
    runner.run(warm_up.id)  # the pool's connections are open and set up
    round_trips_at_checkout = {}  # each connection the measured run takes, with its count when taken

    def remember(connection, _record, _proxy) -> None:
        round_trips_at_checkout.setdefault(connection, connection.round_trips)

    event.listen(get_engine(settings.database_url), "checkout", remember)
    runner.run(measured.id)
    event.remove(get_engine(settings.database_url), "checkout", remember)
    spent = sum(connection.round_trips - at_checkout for connection, at_checkout in round_trips_at_checkout.items())
    # The claim (with the first step's start), each later step's start (with the end before it) and the
    # completion (with the last step's end): a statement and a COMMIT each.
    assert spent == 2 * len(workflow_for(JobType.CREATE_SITE).steps) + 2
    session.expire_all()
    assert session.get(type(measured), measured.id).status == JobStatus.COMPLETED
    events = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == measured.id).order_by(JobEvent.id)).all()
    assert (events[1], events.count("step_completed"), events[-1]) == ("claimed", 5, "completed")
