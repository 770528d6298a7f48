"""Temp files left by writers killed mid-write are removed after a failed fan-out."""

from __future__ import annotations

import threading
import time

from mldebug_ray import paths
from mldebug_ray.evidence.io import remove_temp_files_settled


def test_settled_cleanup_also_removes_a_temp_file_that_appears_just_after_the_first_pass(tmp_path):
    table_dir = tmp_path / paths.EVIDENCE_DIR / "metrics"
    table_dir.mkdir(parents=True)
    (table_dir / f".part-a.parquet.1{paths.TMP_SUFFIX}").write_bytes(b"x")
    (table_dir / "part-b.parquet").write_bytes(b"whole")

    def late_writer():  # a dying worker's last temp file, created after the first pass
        time.sleep(0.1)
        (table_dir / f".part-c.parquet.2{paths.TMP_SUFFIX}").write_bytes(b"y")

    thread = threading.Thread(target=late_writer)
    thread.start()
    removed = remove_temp_files_settled(tmp_path, quiet_s=0.3, limit_s=3.0)
    thread.join()
    assert removed == 2
    assert sorted(p.name for p in table_dir.iterdir()) == ["part-b.parquet"]
