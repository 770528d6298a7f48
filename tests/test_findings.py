import pytest

from mldebug_ray.findings import EvidenceRef, Finding, findings_frame

REF = EvidenceRef("metrics", {"run_id": "r", "step": 5, "key": "loss"}, 3.0, "loss 3.0")


def make(**kw):
    base = dict(kind="divergence", severity="high", confidence=0.9, summary="s", evidence=(REF,), detector="d", run_id="r")
    base.update(kw)
    return Finding(**base)


def test_finding_rejects_unknown_kind_bad_confidence_and_missing_evidence():
    with pytest.raises(ValueError, match="kind"):
        make(kind="weird")
    with pytest.raises(ValueError, match="confidence"):
        make(confidence=1.5)
    with pytest.raises(ValueError, match="evidence"):
        make(evidence=())
    with pytest.raises(ValueError, match="severity"):
        make(severity="huge")


def test_evidence_ref_rejects_unknown_table_and_column():
    with pytest.raises(ValueError, match="table"):
        EvidenceRef("nope", {"run_id": "r"})
    with pytest.raises(ValueError, match="column"):
        EvidenceRef("metrics", {"run_id": "r", "stepp": 1})


def test_findings_round_trip_through_the_table():
    f = make(onset_step=5)
    frame = findings_frame([f])
    back = Finding.from_row(frame.row(0, named=True))
    assert back == f and back.finding_id == f.finding_id
