"""Per-call budgets (turns, tokens, wall time) and the cost of a response's token usage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

# The last share of the wall-time budget is kept for the final (answer) turn: once less
# than this remains, the next request must submit the diagnosis.
FINAL_TURN_TIME_FRAC = 0.25


@dataclass
class Usage:
    """Token counts of one response, as the Messages API reports them (cache tokens are separate)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def of(cls, usage: object) -> "Usage":
        """From the SDK's `Usage` object (missing cache fields count as 0)."""
        return cls(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
            cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        )

    @property
    def prompt_tokens(self) -> int:
        """Everything the request sent: uncached input plus cache writes and reads."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


def cost_usd(usage: Usage, model: str, prices: Mapping[str, Mapping[str, float]]) -> float | None:
    """USD for `usage` at `prices[model]` (per million tokens); None when the model has no price."""
    price = prices.get(model)
    if not price:
        return None
    per_token = {k: float(v) / 1e6 for k, v in price.items()}
    return (
        usage.input_tokens * per_token.get("input", 0.0)
        + usage.output_tokens * per_token.get("output", 0.0)
        + usage.cache_creation_input_tokens * per_token.get("cache_write", per_token.get("input", 0.0))
        + usage.cache_read_input_tokens * per_token.get("cache_read", 0.0)
    )


@dataclass
class Budget:
    """What one agent call may still spend; `final_reason` says why the next turn must answer."""

    max_turns: int
    token_budget: int
    timeout_s: float
    max_tokens: int
    started: float = field(default_factory=time.monotonic)
    turns: int = 0
    tokens: int = 0
    last_prompt_tokens: int = 0

    def record(self, usage: Usage) -> None:
        self.turns += 1
        self.tokens += usage.total
        self.last_prompt_tokens = usage.prompt_tokens

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining_s(self) -> float:
        return self.timeout_s - self.elapsed_s

    def exhausted(self) -> str | None:
        """Why no further request may start at all (None while one may)."""
        if self.turns >= self.max_turns:
            return "turns"
        if self.tokens >= self.token_budget:
            return "tokens"
        if self.remaining_s <= 0:
            return "wall_time"
        return None

    def final_reason(self) -> str | None:
        """Why the next request must be the answer turn (None while the agent may keep investigating).

        The next prompt is at least the last one plus its answer, so a turn whose
        estimated cost (last prompt + max_tokens) would cross the token budget is the last.
        """
        if self.turns + 1 >= self.max_turns:
            return "turns"
        if self.tokens + self.last_prompt_tokens + self.max_tokens > self.token_budget:
            return "tokens"
        if self.remaining_s < FINAL_TURN_TIME_FRAC * self.timeout_s:
            return "wall_time"
        return None
