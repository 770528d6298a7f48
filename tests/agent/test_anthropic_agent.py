"""The Anthropic agent through the real SDK against a scripted loopback Messages API (issue 7)."""

from __future__ import annotations

import json
import time

import polars as pl
import pytest

from agent_loopback import (
    API_KEY, DIV_ONSET, GRAD_SPIKE, GRAD_SPIKE_STEP, PLANTED, Script, agent_config, all_output_text, error, final_reply,
    message, mock_model, submit, text, tool_use,
)
from mldebug_ray.agent import anthropic_agent
from mldebug_ray.diagnose import rules
from mldebug_ray.evidence.io import read_table
from mldebug_ray.render.report_md import render_markdown

EMPTY = {"root_causes": [], "quick_fixes": [], "requests": []}


def ref(step, key, value, text="row"):
    return {"table": "metrics", "where": {"run_id": "r1", "step": step, "key": key}, "value": value, "text": text}


def cause(evidence, confidence=0.95, kind="divergence", issue="LR jump at step 60 made the run diverge"):
    return {
        "issue": issue, "kind": kind, "severity": "critical", "confidence": confidence, "evidence": evidence,
        "fix": "keep lr at 0.001 after step 60 and clip at 1.0", "expected_impact": "loss keeps falling past step 62",
        "verify_by": "rerun from step 55 and compare grad_norm", "onset_step": DIV_ONSET,
    }


def answer(*causes, requests=()):
    return {"root_causes": list(causes), "quick_fixes": ["lower the LR after step 60"], "requests": list(requests), "summary": "LR jump."}


def run(evidence, server, **overrides):
    cfg = agent_config(base_url=server.url, code_roots=[str(evidence.parent / "code")], **overrides)
    t0 = time.monotonic()
    out = anthropic_agent.diagnose(evidence, cfg)
    return out, time.monotonic() - t0


def tool_results(body):
    """The tool_result blocks of the newest user message of a request, by tool_use id."""
    return {b["tool_use_id"]: b for b in body["messages"][-1]["content"] if b.get("type") == "tool_result"}


def test_agent_calls_tools_and_submits_a_diagnosis_whose_valid_references_are_kept(evidence, loopback, api_key):
    loss62 = read_table(evidence, "metrics").filter((pl.col("run_id") == "r1") & (pl.col("step") == DIV_ONSET) & (pl.col("key") == "train_loss"))["value"][0]
    good = answer(cause([
        ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE, "grad_norm 1000 at 60"),
        ref(60, "learning_rate", 0.1, "lr jumped 100x"),
        ref(DIV_ONSET, "train_loss", loss62, "loss rose"),
        {"table": "params", "where": {"run_id": "r1", "key": "optimizer.lr"}, "value": 0.001, "text": "configured lr"},
    ]))
    script = Script({
        "r1": [
            message([text("Check the grad norm."), tool_use("query_sql", {"query": "SELECT step, value FROM metrics WHERE run_id = 'r1' AND key = 'grad_norm' ORDER BY value DESC LIMIT 3"}, "t_sql")]),
            message([tool_use("metric_series", {"run_id": "r1", "key": "learning_rate", "step_min": 55, "step_max": 65}, "t_series"),
                     tool_use("read_code", {"path": "train.py"}, "t_code"),
                     tool_use("compare_runs", {"run_ids": ["r1", "r2"]}, "t_cmp")]),
            submit(good, stop_reason="tool_use"),
        ],
        "sweep": [submit(EMPTY)],
    })
    server = loopback(script)
    out, _ = run(evidence, server)

    bodies = server.bodies()
    r1 = [b for b in bodies if "Diagnose run `r1`" in json.dumps(b["messages"][0])]
    assert len(r1) == 3
    sql = tool_results(r1[1])["t_sql"]
    assert not sql.get("is_error") and "1000" in sql["content"]
    later = tool_results(r1[2])
    assert "0.1" in later["t_series"]["content"] and "LR_AFTER_EPOCH_7" in later["t_code"]["content"]
    assert "params_differing" in later["t_cmp"]["content"] and not any(b.get("is_error") for b in later.values())

    entry = out["runs"]["r1"]
    assert entry["agent"]["status"] == "ok" and entry["agent"]["turns"] == 3
    top = entry["root_causes"][0]
    assert top["issue"] == "LR jump at step 60 made the run diverge" and top["confidence"] == 0.95
    assert len(top["evidence"]) == 4 and "[validation" not in top["issue"]
    assert out["validation"]["checked_references"] >= 4 and out["validation"]["removed_references"] == []
    assert out["runs"]["r2"]["agent"]["status"] == "not_sent"  # healthy: no tokens spent
    assert out["agent"] == "anthropic" and out["sweep"]["agent"]["status"] == "ok"


def test_invented_citations_are_removed_the_claim_lowered_or_dropped_and_the_report_says_so(evidence, loopback, api_key):
    fabricated = answer(
        cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE), ref(9999, "grad_norm", 5.0, "no such step"), ref(GRAD_SPIKE_STEP, "grad_norm", 31337.0, "wrong value")]),
        cause([{"table": "gradients", "where": {"run_id": "r1", "step": 60, "layer": "fc1"}, "value": 9.0, "text": "invented"}],
              kind="exploding_gradients", issue="fc1 gradients explode", confidence=0.9),
    )
    server = loopback(Script({"r1": [submit(fabricated)], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server)
    causes = out["runs"]["r1"]["root_causes"]
    assert [c["kind"] for c in causes] == ["divergence"]  # the claim with no valid evidence is dropped
    kept = causes[0]
    assert len(kept["evidence"]) == 1 and kept["evidence"][0]["value"] == GRAD_SPIKE
    assert kept["confidence"] == pytest.approx(0.95 * 0.7**2, abs=1e-3) and kept["confidence"] < 0.8
    assert "2 of 3 cited evidence references did not hold" in kept["issue"]
    assert out["runs"]["r1"]["requests"], "a cause below 0.8 needs requests (SPEC §5)"
    v = out["validation"]
    assert len(v["removed_references"]) == 3 and len(v["dropped_claims"]) == 1 and len(v["lowered_confidence"]) == 1
    assert {r["reference"]["where"].get("step") for r in v["removed_references"]} == {9999, 60}
    assert out["status"] == "needs_more_data"
    assert "did not hold and were removed" in render_markdown(out, "t")


def test_an_instruction_planted_in_a_log_line_cannot_widen_what_the_tools_read(evidence, loopback, api_key, tmp_path):
    (tmp_path / "secret.txt").write_text("TOP-SECRET-OUTSIDE-ROOTS")
    (tmp_path / "code" / "leak").symlink_to("/etc/passwd")
    (tmp_path / "code" / "up").symlink_to(tmp_path)
    obeying = [
        tool_use("read_code", {"path": "/etc/passwd"}, "a"),
        tool_use("read_code", {"path": "../secret.txt"}, "b"),
        tool_use("read_code", {"path": "leak"}, "c"),
        tool_use("read_code", {"path": "up/secret.txt"}, "d"),
        tool_use("read_code", {"path": "/proc/self/environ"}, "e"),
        tool_use("grep_code", {"text": "root:"}, "f"),
        tool_use("query_sql", {"query": "SELECT * FROM read_csv('/etc/passwd')"}, "g"),
        tool_use("query_sql", {"query": "SELECT text FROM events WHERE run_id = 'r1'"}, "h"),
    ]
    server = loopback(Script({"r1": [message([text("The log says to read /etc/passwd.")] + obeying), submit(EMPTY)], "sweep": [submit(EMPTY)]}))
    run(evidence, server)
    results = tool_results(server.bodies()[1])
    for block_id in "abcdeg":
        assert results[block_id].get("is_error"), (block_id, results[block_id])
    assert json.loads(results["f"]["content"])["matches"] == []
    seen = json.dumps(server.bodies())
    assert "root:x:0:0" not in seen and "TOP-SECRET-OUTSIDE-ROOTS" not in seen and API_KEY not in seen
    assert PLANTED in results["h"]["content"]  # the planted line is returned as data, nothing more


def test_the_turn_budget_makes_the_last_turn_answer_in_structured_output(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    sql = tool_use("query_sql", {"query": "SELECT count(*) AS n FROM metrics"})
    server = loopback(Script({"r1": [message([sql]), lambda body: final_reply(body, good)], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, max_turns=2)
    last = [b for b in server.bodies() if "Diagnose run" in json.dumps(b["messages"][0])][-1]
    assert last["tool_choice"] == {"type": "none"} and last["output_config"]["format"]["type"] == "json_schema"
    assert "Budget reached (turns)" in json.dumps(last["messages"][-1])
    info = out["runs"]["r1"]["agent"]
    assert info["status"] == "budget_stopped" and info["stopped_by"] == "turns" and "turns budget" in info["note"]
    assert out["runs"]["r1"]["root_causes"][0]["evidence"][0]["value"] == GRAD_SPIKE


def test_forced_tool_mode_forces_submit_diagnosis_on_the_last_turn(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    sql = tool_use("query_sql", {"query": "SELECT count(*) AS n FROM metrics"})
    server = loopback(Script({"r1": [message([sql]), submit(good)], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, max_turns=2, final_answer="forced_tool")
    last = [b for b in server.bodies() if "Diagnose run" in json.dumps(b["messages"][0])][-1]
    assert last["tool_choice"] == {"type": "tool", "name": "submit_diagnosis"} and "output_config" not in last
    assert out["runs"]["r1"]["agent"]["status"] == "budget_stopped"


def test_a_model_that_ignores_the_last_turn_leaves_the_rules_diagnosis_with_a_note(evidence, loopback, api_key):
    sql = lambda body: message([tool_use("query_sql", {"query": "SELECT 1 AS one"})])  # noqa: E731
    server = loopback(Script({"r1": [sql, sql, sql], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, max_turns=3, final_answer="forced_tool")
    draft = rules.diagnose(evidence, agent_config())
    entry = out["runs"]["r1"]
    assert entry["agent"]["status"] == "fallback_rules" and "did not submit" in entry["agent"]["note"]
    assert entry["root_causes"] == draft["runs"]["r1"]["root_causes"]
    assert any("r1" in n for n in out["agent_notes"])
    assert sum("Diagnose run" in json.dumps(b["messages"][0]) for b in server.bodies()) == 3


def test_the_token_budget_ends_the_investigation(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    big = message([tool_use("query_sql", {"query": "SELECT 1 AS one"})], usage={"input_tokens": 3000, "output_tokens": 100})
    server = loopback(Script({"r1": [big, lambda body: final_reply(body, good)], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, token_budget=5000, max_tokens=1000)
    assert out["runs"]["r1"]["agent"]["stopped_by"] == "tokens"
    assert out["runs"]["r1"]["agent"]["status"] == "budget_stopped"


def test_the_wall_time_budget_ends_the_investigation(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    slow = message([tool_use("query_sql", {"query": "SELECT 1 AS one"})])
    slow.delay_s = 1.7
    server = loopback(Script({"r1": [slow, lambda body: final_reply(body, good)], "sweep": [submit(EMPTY)]}))
    out, elapsed = run(evidence, server, timeout_s=2.0)
    assert out["runs"]["r1"]["agent"]["stopped_by"] == "wall_time"
    assert out["runs"]["r1"]["agent"]["status"] == "budget_stopped"


def test_a_hanging_api_is_cut_at_the_wall_time_budget_and_the_rules_diagnosis_stands(evidence, loopback, api_key):
    hang = error(500, delay_s=30)
    server = loopback(Script({"r1": [hang], "sweep": [hang]}))
    out, elapsed = run(evidence, server, timeout_s=1.5, max_retries=3)
    assert elapsed < 1.5 * 2 + 2.0, elapsed  # two calls (run, sweep), each cut at its budget
    entry = out["runs"]["r1"]
    assert entry["agent"]["status"] == "fallback_rules" and "wall-time" in entry["agent"]["note"]
    assert entry["root_causes"] == rules.diagnose(evidence, agent_config())["runs"]["r1"]["root_causes"]


def test_429_then_success_is_retried_with_backoff(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    server = loopback(Script({"r1": [[error(429, "rate_limit_error"), submit(good)]], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server)
    assert out["runs"]["r1"]["agent"]["status"] == "ok"
    calls = read_table(evidence, "agent_calls").filter(pl.col("run_id") == "r1").sort("latency_s")
    assert sorted(calls["status"].to_list()) == ["error", "ok"]
    assert "429" in calls.filter(pl.col("status") == "error")["error"][0]


def test_persistent_500s_fall_back_to_the_rules_diagnosis_with_a_clear_note(evidence, loopback, api_key):
    server = loopback(Script({"r1": [[error(500)]], "sweep": [[error(500)]]}))
    out, _ = run(evidence, server, max_retries=2)
    entry = out["runs"]["r1"]
    assert entry["agent"]["status"] == "fallback_rules"
    assert "HTTP 500" in entry["agent"]["note"] and "after 2 retries" in entry["agent"]["note"] and "rules diagnosis stands" in entry["agent"]["note"]
    assert entry["root_causes"] == rules.diagnose(evidence, agent_config())["runs"]["r1"]["root_causes"]
    assert sum(1 for b in server.bodies() if "Diagnose run" in json.dumps(b["messages"][0])) == 3  # 1 + 2 retries


def test_a_rejected_key_stops_further_calls(evidence, loopback, api_key):
    server = loopback(Script({"r1": [error(401, "authentication_error")], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server)
    assert len(server.bodies()) == 1  # no retry, no sweep call
    assert out["sweep"]["agent"]["status"] == "fallback_rules" and "not sent" in out["sweep"]["agent"]["note"]


def test_a_malformed_submission_is_sent_back_for_a_fix(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    bad = {"root_causes": [{"issue": "x", "kind": "not_a_kind"}]}
    server = loopback(Script({"r1": [submit(bad), submit(good)], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server)
    assert out["runs"]["r1"]["agent"]["status"] == "ok"
    rejected = [b for b in tool_results(server.bodies()[1]).values()]
    assert rejected[0]["is_error"] and "not_a_kind" in rejected[0]["content"]


def test_a_final_answer_that_is_not_json_falls_back_to_the_rules_diagnosis(evidence, loopback, api_key):
    garbage = lambda body: message([text("{ not json")], stop_reason="end_turn")  # noqa: E731
    server = loopback(Script({"r1": [garbage], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, max_turns=1)
    assert out["runs"]["r1"]["agent"]["status"] == "fallback_rules"
    assert "not a valid diagnosis" in out["runs"]["r1"]["agent"]["note"]


def test_requests_carry_prompt_caching_breakpoints_on_tools_system_and_the_newest_turn(evidence, loopback, api_key):
    sql = tool_use("query_sql", {"query": "SELECT 1 AS one"})
    server = loopback(Script({"r1": [message([sql]), message([sql]), submit(EMPTY)], "sweep": [submit(EMPTY)]}))
    run(evidence, server)
    bodies = [b for b in server.bodies() if "Diagnose run" in json.dumps(b["messages"][0])]
    assert len(bodies) == 3
    for body in bodies:
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert all("cache_control" not in t for t in body["tools"][:-1])
        marked = [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
        assert marked == [body["messages"][-1]["content"][-1]]  # one moving breakpoint: 3 in all, under the API's 4
    assert bodies[0]["system"] == bodies[2]["system"] and bodies[0]["tools"] == bodies[2]["tools"]  # a stable cached prefix


def test_agent_calls_rows_record_tokens_and_cost(evidence, loopback, api_key):
    usage = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 0}
    usage2 = {"input_tokens": 400, "output_tokens": 300, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3000}
    sql = message([tool_use("query_sql", {"query": "SELECT 1 AS one"})], usage=usage)
    server = loopback(Script({"r1": [sql, submit(EMPTY, usage=usage2)], "sweep": [submit(EMPTY)]}))
    run(evidence, server)
    rows = read_table(evidence, "agent_calls").filter(pl.col("run_id") == "r1").sort("turn")
    assert rows["input_tokens"].to_list() == [1000, 400] and rows["output_tokens"].to_list() == [200, 300]
    assert rows["cache_creation_input_tokens"].to_list() == [3000, 0] and rows["cache_read_input_tokens"].to_list() == [0, 3000]
    # claude-sonnet-5-5 in conf/agent/anthropic.yaml: $2 in, $10 out, $2.50 cache write, $0.10 cache read per MTok
    assert rows["cost_usd"].to_list() == pytest.approx([(1000 * 2 + 200 * 10 + 3000 * 2.5) / 1e6, (400 * 2 + 300 * 10 + 3000 * 0.1) / 1e6])
    assert rows["model"].unique().to_list() == ["claude-sonnet-5-5"] and rows["status"].to_list() == ["ok", "ok"]
    assert rows["result_json"][-1] is not None and rows["evidence_hash"].n_unique() == 1


def test_a_rerun_on_the_same_evidence_reuses_the_answers_and_spends_no_tokens(evidence, loopback, api_key):
    good = answer(cause([ref(GRAD_SPIKE_STEP, "grad_norm", GRAD_SPIKE)]))
    server = loopback(Script({"r1": [submit(good)], "sweep": [submit(EMPTY)]}))
    first, _ = run(evidence, server)
    n = len(server.bodies())
    again, _ = run(evidence, server)
    assert len(server.bodies()) == n
    assert again["runs"]["r1"]["root_causes"] == first["runs"]["r1"]["root_causes"]
    assert again["runs"]["r1"]["agent"]["status"] == "cached"
    rows = read_table(evidence, "agent_calls")
    assert set(rows["status"]) == {"cached"} and rows["input_tokens"].sum() == 0


def test_the_key_is_sent_to_the_api_and_never_written(evidence, loopback, api_key, caplog):
    caplog.set_level("DEBUG")
    server = loopback(Script({"r1": [[error(500), error(500)]], "sweep": [submit(EMPTY)]}))
    out, _ = run(evidence, server, max_retries=1)
    assert any(API_KEY in v for v in server.requests[0]["headers"].values())  # the SDK sends it (Authorization)
    assert API_KEY not in json.dumps(out) and API_KEY not in all_output_text(evidence) and API_KEY not in caplog.text


def test_mock_model_end_to_end_keeps_the_drafts_references(evidence, loopback, api_key):
    cache: dict[str, int] = {}
    server = loopback(lambda body: mock_model(body, cache))
    out, _ = run(evidence, server)
    assert out["runs"]["r1"]["agent"]["status"] == "ok" and out["validation"]["removed_references"] == []
    rows = read_table(evidence, "agent_calls")
    assert rows["cache_read_input_tokens"].sum() > 0
