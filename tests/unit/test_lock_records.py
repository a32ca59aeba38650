"""The folder lock writes its record only into a lock file of its own: a user's file named ``.lock`` is refused and
left as it was; an empty file or the record of a holder that died is taken over."""

from __future__ import annotations

import json

import pytest

from workbench.core.locks import LockFileRefused, folder_lock


def test_a_user_file_named_lock_is_refused_and_kept(tmp_path):
    (tmp_path / ".lock").write_text("my notes, not a lock\n")
    with pytest.raises(LockFileRefused, match=r"\.lock.*something else than a workbench lock record"):
        with folder_lock(tmp_path):
            pytest.fail("the lock was taken")
    assert (tmp_path / ".lock").read_text() == "my notes, not a lock\n"


@pytest.mark.parametrize("content", ["", json.dumps({"pid": 1, "host": "h", "started": "2026-01-01T00:00:00"}) + "\n"],
                         ids=["empty", "a dead holder's record"])
def test_an_empty_lock_or_a_dead_holders_record_is_taken_over(tmp_path, content):
    (tmp_path / ".lock").write_text(content)
    with folder_lock(tmp_path):
        record = json.loads((tmp_path / ".lock").read_text())
    assert set(record) == {"pid", "host", "started"} and record["pid"] != 1
