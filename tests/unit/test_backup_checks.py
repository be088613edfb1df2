"""What makes a backup's files trustworthy: every file as recorded, and a dump that is whole SQL."""

import gzip

import pytest

from provisioning.backups.book import BackupInvalid, describe, verify
from provisioning.sites.drivers.base import BackupFile

SQL = b"-- MariaDB dump 10.19\nCREATE TABLE `tabUser` (`name` varchar(140));\nINSERT INTO `tabUser` VALUES ('x');\n"
TRAILER = b"-- Dump completed on 2026-11-30 01:02:03\n"


def recorded(tmp_path, dump: bytes) -> list[dict]:
    (tmp_path / "database.sql.gz").write_bytes(dump)
    (tmp_path / "site_config_backup.json").write_text("{}")
    return describe(
        [BackupFile("database", tmp_path / "database.sql.gz"), BackupFile("config", tmp_path / "site_config_backup.json")]
    )


def test_a_whole_dump_with_its_files_as_recorded_passes(tmp_path):
    files = recorded(tmp_path, gzip.compress(SQL + TRAILER))
    verify(files)
    assert [file["kind"] for file in files] == ["database", "config"] and all(len(file["sha256"]) == 64 for file in files)


@pytest.mark.parametrize(
    "dump, reason",
    [
        (b"", "is empty"),
        (gzip.compress(SQL + TRAILER)[:-12], "not a complete gzip"),
        (b"CREATE TABLE plain text, not gzip", "not a complete gzip"),
        (gzip.compress(b"nothing but prose\n" + TRAILER), "has no SQL"),
        (gzip.compress(SQL), "stops before its end"),
    ],
)
def test_a_dump_that_cannot_be_restored_fails_saying_why(tmp_path, dump, reason):
    with pytest.raises(BackupInvalid, match=reason):
        verify(recorded(tmp_path, dump))


def test_a_file_changed_or_gone_since_it_was_recorded_fails(tmp_path):
    files = recorded(tmp_path, gzip.compress(SQL + TRAILER))
    (tmp_path / "site_config_backup.json").write_text('{"changed": true}')
    with pytest.raises(BackupInvalid, match="config file site_config_backup.json changed"):
        verify(files)
    (tmp_path / "site_config_backup.json").unlink()
    with pytest.raises(BackupInvalid, match="is missing"):
        verify(files)


def test_a_backup_without_a_database_dump_is_no_backup(tmp_path):
    (tmp_path / "site_config_backup.json").write_text("{}")
    with pytest.raises(BackupInvalid, match="no database dump"):
        verify(describe([BackupFile("config", tmp_path / "site_config_backup.json")]))
