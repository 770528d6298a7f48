"""Evidence tables on disk: atomic Parquet parts per run, read back as one frame per table."""

from mldebug_ray.evidence.io import read_table, write_table

__all__ = ["read_table", "write_table"]
