"""The name a job's row records for the pool process that runs it."""

from tasks.jobs import WORKER_COLUMN_LENGTH, worker_identity


def test_a_worker_is_recorded_by_its_node_name_and_pool_process():
    assert worker_identity("erpmax.provisioning@host-3", 4242) == "erpmax.provisioning@host-3 pid 4242"


def test_a_node_name_too_long_for_the_column_is_cut_so_the_claim_can_store_it():
    """The default node name is <queue>@<host>: a long queue name and a long host name must not
    make every claim fail (the job would be republished for ever)."""
    identity = worker_identity("q" * 200 + "@" + "h" * 64, 4194304)
    assert len(identity) == WORKER_COLUMN_LENGTH
    assert identity.endswith(" pid 4194304")
