"""
Every model call's tokens and dollars go into the ledger's llm_spend table; the program's
budget.total_llm_dollars (shared by all its agents) stops an agent once it is reached. The CPU
time of each agent's own box goes into agent_cpu (org/agents/sandbox.py meters it); its
budget.agent_cpu_seconds (each agent's own) ends its commands once reached (cpu_exhausted).

Prices are US dollars per million tokens, from org/prices.yaml (longest matching model-id
prefix; `unknown` otherwise). usage_of reads a reply's tokens, as the gateway passes it on.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from org.ledger import Ledger
from org.agents.models import Usage

PRICES_FILE = Path(__file__).resolve().parents[1] / "prices.yaml"


def load_prices(path: str | Path = PRICES_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def price_of(model: str, prices: dict) -> tuple[dict, bool]:
    """(prices per million tokens, whether the model was found)."""
    keys = [k for k in prices["models"] if model.startswith(k)]
    if not keys:
        return prices["unknown"], False
    return prices["models"][max(keys, key=len)], True


def unpriced_variant(model: str, prices: dict) -> str | None:
    """What a model id names past the key that prices it that makes it another model (prices.yaml's
    `variants`: gpt-5-pro is not gpt-5), or None."""
    keys = [k for k in prices["models"] if model.startswith(k)]
    rest = model[len(max(keys, key=len)):] if keys else ""
    return next((v for v in prices.get("variants", ()) if v in rest), None)


def dollars(model: str, usage: Usage, prices: dict) -> float:
    p, _ = price_of(model, prices)
    five_minutes = usage.cache_write - usage.cache_write_1h
    return (usage.input * p["input"] + usage.output * p["output"] + five_minutes * p["cache_write"]
            + usage.cache_write_1h * 2 * p["input"] + usage.cache_read * p["cache_read"]) / 1e6


class Spend:
    def __init__(self, ledger_path: str | Path, program: str, agent: str, budget_dollars: float,
                 prices: dict | None = None):
        self.ledger_path, self.program, self.agent = Path(ledger_path), program, agent
        self.budget = budget_dollars
        self.prices = prices or load_prices()

    def price(self, model: str, usage: Usage) -> float:
        return dollars(model, usage, self.prices)

    def record(self, model: str, usage: Usage) -> float:
        cost = self.price(model, usage)
        with Ledger(self.ledger_path) as ledger:
            ledger.record_spend(self.program, self.agent, model, usage.tokens_in, usage.output, cost)
        return cost

    def exhausted(self) -> str | None:
        """Why no more calls may be made, or None: the program's total spent, or this agent's share
        (the ledger's figures: a person's `org budget` changes them while the org runs)."""
        with Ledger(self.ledger_path) as ledger:
            spend, fixed = ledger.spend(self.program), ledger.program(self.program) and ledger.budget(self.program)
        limit = fixed["total_llm_dollars"] if fixed else self.budget
        if spend["dollars"] >= limit:
            return f"the program's LLM budget is spent (${spend['dollars']:.4f} of ${limit:g})"
        return fixed and share_spent(self.agent, spend, fixed) or None


def agent_dollars(spend: dict, agent: str) -> float:
    """An agent's dollars in ledger.spend()'s figures."""
    return spend["agents"].get(agent, {}).get("dollars") or 0.0


def share_spent(agent: str, spend: dict, budget: dict) -> str | None:
    """Why `agent` may make no more calls of its own (its budget.agent_llm_dollars spent), or None."""
    share, mine = budget.get("agent_llm_dollars"), agent_dollars(spend, agent)
    if share is not None and mine >= share:
        return f"your share of the program's LLM budget is spent (${mine:.4f} of budget.agent_llm_dollars ${share:g})"
    return None


def cpu_exhausted(ledger_path: str | Path, program: str, agent: str) -> str | None:
    """Why the agent's box may compute no more, or None: its CPU seconds so far against the
    program's budget.agent_cpu_seconds as the ledger holds it (`org budget` changes it), which
    is total_compute_seconds where unset. Work done there is outside every run's budget: a model
    trained for the runs to start from, seeds tried to pick from."""
    with Ledger(ledger_path) as ledger:
        if not ledger.program(program):
            return None
        budget, used = ledger.budget(program), ledger.agent_cpu(program).get(agent, 0.0)
    limit = budget.get("agent_cpu_seconds") or budget["total_compute_seconds"]
    if used >= limit:
        return (f"your box's CPU time is spent ({used:.0f} of the program's budget.agent_cpu_seconds "
                f"{limit:g} CPU-s): submit experiments, which the runner runs on the budget")
    return None


# --- reading a reply's usage (org/gateway.py meters each call by it) ------------------------------

def usage_of(raw: bytes, content_type: str, provider: str):
    """The tokens a reply reports: from its JSON, or from the server-sent events of a stream
    (Anthropic: message_start, then message_delta's running output count; OpenAI: the last
    chunk's usage, or response.completed's)."""
    events = []
    if "event-stream" in content_type:
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("data:"):
                try:
                    events.append(json.loads(line[5:]))
                except ValueError:
                    pass  # [DONE], or a torn line
    else:
        try:
            events.append(json.loads(raw))
        except ValueError:
            pass
    seen: dict[str, int] = {}
    for event in events:
        for usage in _usages(event):
            for name, value in _flat(usage).items():
                if isinstance(value, int):
                    seen[name] = max(seen.get(name, 0), value)
    if provider == "anthropic":
        return Usage(input=seen.get("input_tokens", 0), output=seen.get("output_tokens", 0),
                     cache_write=seen.get("cache_creation_input_tokens", 0),
                     cache_write_1h=seen.get("cache_creation.ephemeral_1h_input_tokens", 0),
                     cache_read=seen.get("cache_read_input_tokens", 0))
    cached = seen.get("prompt_tokens_details.cached_tokens", 0) or seen.get("input_tokens_details.cached_tokens", 0)
    prompt = seen.get("prompt_tokens", 0) or seen.get("input_tokens", 0)
    output = seen.get("completion_tokens", 0) or seen.get("output_tokens", 0)
    return Usage(input=max(prompt - cached, 0), output=output, cache_read=cached)


def _usages(event) -> list[dict]:
    if not isinstance(event, dict):
        return []
    found = [event["usage"]] if isinstance(event.get("usage"), dict) else []
    for key in ("message", "response"):  # anthropic's message_start, openai's response.completed
        if isinstance(event.get(key), dict) and isinstance(event[key].get("usage"), dict):
            found.append(event[key]["usage"])
    return found


def _flat(usage: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in usage.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
