"""Diagnosis: from findings to ranked root causes (SPEC §5 diagnosis.json)."""
