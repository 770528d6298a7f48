"""One agent call: the tool-use loop with the Messages API, under its budgets, ending in a checked answer.

The loop asks, runs the tools the model calls, and feeds the results back until the
model calls `submit_diagnosis`. When a budget is about to run out (turns, tokens,
wall time) the next turn is the last: it says why and makes the model answer, either
with a forced tool_choice or with structured JSON output (`agent.final_answer`; the
5.5 models refuse a forced tool with a 400). Prompt caching: the tool list and the
system prompt carry `cache_control` breakpoints (static, so every turn and every run
reads them from the cache), and the newest user turn carries a moving one so each turn
reads the conversation so far from the cache.

Retries are done here rather than by the SDK (`max_retries=0` on the client): the
SDK's backoff cannot see the call's wall-time deadline, and no request may outlive it.
429, 408/409, 5xx and connection errors are retried with exponential backoff (or the
server's retry-after) up to `agent.max_retries` times within the deadline.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic

from mldebug_ray.agent.budget import Budget, Usage
from mldebug_ray.agent.tools import Toolbox
from mldebug_ray.agent.validate import ANSWER_SCHEMA, SUBMIT_TOOL, AnswerError, check_answer, submit_tool_definition
from mldebug_ray.config import AgentConfig

log = logging.getLogger(__name__)

CACHE = {"type": "ephemeral"}
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0
MAX_MALFORMED_ANSWERS = 2  # rejected submit_diagnosis calls before the call gives up
RETRYABLE_STATUS = (408, 409, 429)

FINAL_TURN_TEXT = (
    "Budget reached ({reason}): this is your last turn. Submit the diagnosis now from the evidence you have "
    "checked; cite only rows you saw, lower the confidence where a check is missing and say what data would "
    "settle it in `requests`."
)
NUDGE_TEXT = "Continue the investigation with the tools, or call submit_diagnosis with your answer."


@dataclass
class Turn:
    """One request (a retry is its own request): what it cost and how it ended."""

    turn: int
    usage: Usage
    status: str  # ok / error
    stop_reason: str | None
    latency_s: float
    error: str | None = None


@dataclass
class Outcome:
    """How one agent call ended."""

    answer: dict[str, Any] | None
    status: str  # ok / budget_stopped / failed
    turns: list[Turn] = field(default_factory=list)
    stopped_by: str | None = None
    note: str = ""
    fatal: bool = False  # the API refuses every call (key, permission, model): stop sending more


class CallFailed(Exception):
    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def system_blocks(prompt: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": prompt, "cache_control": CACHE}]


def tool_definitions(toolbox: Toolbox) -> list[dict[str, Any]]:
    tools = toolbox.definitions() + [submit_tool_definition()]
    tools[-1] = {**tools[-1], "cache_control": CACHE}  # caches every tool definition before it
    return tools


def _assistant_blocks(content: list[Any]) -> list[dict[str, Any]]:
    """The response's blocks as request params (thinking blocks are sent back unchanged, as the API requires)."""
    out = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            out.append({"type": "text", "text": block.text})
        elif kind == "tool_use":
            out.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        elif kind == "thinking":
            out.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif kind == "redacted_thinking":
            out.append({"type": "redacted_thinking", "data": block.data})
        else:
            out.append(block.model_dump(mode="json", exclude_none=True))
    return out


def _with_moving_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` whose last block carries the one message-level cache breakpoint."""
    out = copy.deepcopy(messages)
    last = out[-1]["content"][-1]
    last["cache_control"] = CACHE
    return out


def _retry_after(headers: Any) -> float | None:
    try:
        if headers.get("retry-after-ms") is not None:
            return min(float(headers["retry-after-ms"]) / 1000.0, MAX_RETRY_AFTER_S)
        if headers.get("retry-after") is not None:
            return min(float(headers["retry-after"]), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):
        return None
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _create(client: Any, params: dict[str, Any], budget: Budget, cfg: AgentConfig, turns: list[Turn]) -> Any:
    """The response to `params`, retried within the deadline; CallFailed when it cannot be had."""
    attempt = 0
    while True:
        remaining = budget.remaining_s
        if remaining <= 0:
            raise CallFailed(f"wall-time budget of {cfg.timeout_s:.0f}s spent before an answer")
        t0 = time.monotonic()
        try:
            response = client.with_options(timeout=remaining).messages.create(**params)
        except anthropic.APIStatusError as exc:
            latency = time.monotonic() - t0
            turns.append(Turn(budget.turns, Usage(), "error", None, latency, f"HTTP {exc.status_code}: {_one_line(exc)}"))
            should = exc.response.headers.get("x-should-retry")
            retryable = exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
            if should in ("true", "false"):
                retryable = should == "true"
            if not retryable or attempt >= cfg.max_retries:
                fatal = exc.status_code in (401, 403, 404)
                raise CallFailed(f"the Messages API answered HTTP {exc.status_code} ({_one_line(exc)})"
                                 + (f" after {attempt} retries" if attempt else ""), fatal) from None
            delay = _retry_after(exc.response.headers)
        except anthropic.APIConnectionError as exc:  # includes timeouts
            latency = time.monotonic() - t0
            turns.append(Turn(budget.turns, Usage(), "error", None, latency, _one_line(exc)))
            if budget.remaining_s <= 0:
                raise CallFailed(f"wall-time budget of {cfg.timeout_s:.0f}s spent waiting for the API ({_one_line(exc)})") from None
            if attempt >= cfg.max_retries:
                raise CallFailed(f"cannot reach the Messages API after {attempt} retries ({_one_line(exc)})") from None
            delay = None
        else:
            return response, time.monotonic() - t0
        if delay is None:
            delay = min(MAX_RETRY_DELAY_S, INITIAL_RETRY_DELAY_S * 2**attempt) * (1 - 0.25 * random.random())
        if delay >= budget.remaining_s:
            raise CallFailed(f"wall-time budget of {cfg.timeout_s:.0f}s would be spent waiting to retry ({turns[-1].error})")
        time.sleep(delay)
        attempt += 1


def _final_params(cfg: AgentConfig) -> dict[str, Any]:
    if cfg.final_answer == "forced_tool":
        return {"tool_choice": {"type": "tool", "name": SUBMIT_TOOL}}
    return {
        "tool_choice": {"type": "none"},
        "output_config": {"format": {"type": "json_schema", "schema": anthropic.transform_schema(ANSWER_SCHEMA)}},
    }


def converse(client: Any, cfg: AgentConfig, prompt: str, first_message: str, toolbox: Toolbox) -> Outcome:
    """Run one agent call to its end; never raises for API or model trouble (the Outcome says what happened)."""
    budget = Budget(max_turns=cfg.max_turns, token_budget=cfg.token_budget, timeout_s=cfg.timeout_s, max_tokens=cfg.max_tokens)
    turns: list[Turn] = []
    base = {"model": cfg.model, "max_tokens": cfg.max_tokens, "system": system_blocks(prompt), "tools": tool_definitions(toolbox)}
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": first_message}]}]
    stopped_by: str | None = None
    malformed = 0

    def end(status: str, note: str = "", answer: dict | None = None, fatal: bool = False) -> Outcome:
        return Outcome(answer, status, turns, stopped_by, note, fatal)

    while True:
        spent = budget.exhausted()
        if spent:
            return end("failed", f"{spent} budget spent before an answer")
        final = budget.final_reason()
        if final:
            stopped_by = final
            messages[-1]["content"].append({"type": "text", "text": FINAL_TURN_TEXT.format(reason=final)})
        params = {**base, "messages": _with_moving_breakpoint(messages), **(_final_params(cfg) if final else {})}
        try:
            response, latency = _create(client, params, budget, cfg, turns)
        except CallFailed as exc:
            return end("failed", str(exc), fatal=exc.fatal)
        usage = Usage.of(response.usage)
        budget.record(usage)
        turns.append(Turn(budget.turns - 1, usage, "ok", response.stop_reason, latency))
        if not response.content and not final:
            continue  # nothing to answer to (the API refuses an empty assistant turn): ask again, within budget
        messages.append({"role": "assistant", "content": _assistant_blocks(response.content) or [{"type": "text", "text": "(empty)"}]})
        status = "budget_stopped" if final else "ok"

        if final and cfg.final_answer == "output_format":
            text = "".join(b.text for b in response.content if getattr(b, "type", None) == "text")
            try:
                return end(status, answer=check_answer(json.loads(text)))
            except (json.JSONDecodeError, AnswerError) as exc:
                return end("failed", f"the final answer is not a valid diagnosis ({str(exc)[:300]}; stop_reason {response.stop_reason})")

        tool_uses = [b for b in response.content if getattr(b, "type", None) == "tool_use"]
        submit = next((b for b in tool_uses if b.name == SUBMIT_TOOL), None)
        if submit is not None:
            try:
                return end(status, answer=check_answer(submit.input))
            except AnswerError as exc:
                malformed += 1
                if final or malformed > MAX_MALFORMED_ANSWERS:
                    return end("failed", f"the submitted diagnosis is not valid ({str(exc)[:300]})")
                results = [
                    {"type": "tool_result", "tool_use_id": b.id, "is_error": True,
                     "content": f"diagnosis rejected, fix and submit again: {exc}" if b is submit else "not run: submit_diagnosis ends the turn"}
                    for b in tool_uses
                ]
                messages.append({"role": "user", "content": results})
                continue
        if final:
            return end("failed", f"the last turn ({final} budget) did not submit a diagnosis (stop_reason {response.stop_reason})")
        if response.stop_reason == "refusal":
            return end("failed", "the model declined to answer (stop_reason refusal)")
        if tool_uses:
            results = []
            for b in tool_uses:
                result = toolbox.call(b.name, b.input)
                block = {"type": "tool_result", "tool_use_id": b.id, "content": result.text}
                if result.is_error:
                    block["is_error"] = True
                    log.info("agent tool %s refused: %s", b.name, result.text[:200])
                results.append(block)
            messages.append({"role": "user", "content": results})
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": NUDGE_TEXT}]})
