"""
The LLM gateway: the one process of a launched org that holds the API keys.

Agents never see a key. Each gets its own token, and its model client talks to the gateway on
127.0.0.1 with the token where a key would go (x-api-key, or Authorization: Bearer):

    POST http://127.0.0.1:PORT/anthropic/v1/messages        -> ANTHROPIC_BASE_URL/v1/messages
    POST http://127.0.0.1:PORT/openai/chat/completions      -> OPENAI_BASE_URL/chat/completions

For every call the gateway
- finds the agent by its token (401 for any other token), and refuses a call for another model
  than the one its program gives that agent (403): its shell can read the token from its CLI's
  process, and an org of one model that called another would be compared as the first;
- forwards only the calls the backends and the CLIs make, each of which it knows how to meter
  (ENDPOINTS; 403 naming the path for any other: a batch of 200 calls in one request, files,
  fine-tuning would spend where no reply shows it);
- refuses the call once the program's LLM spend has reached budget.total_llm_dollars, the
  ledger's (403, an error body the SDKs read); while a call is in flight its worst case (its
  max_tokens of output, its input estimated from its size) is held against the budget, so calls
  sent at once cannot all pass the check before any is metered; the hold is a row of llm_spend,
  so a call in flight when the gateway dies stays charged its worst case;
- reads each agent's calls paced (org/agents/pacing.py): parsing them is the harness's work, at
  a run's priority, and 32 MB of `[{},...]` cost 4.3 CPU-s before it was refused;
- forwards it with the real key, streaming the reply back as it arrives (and reading on to its
  end if the agent hangs up: a stream's usage comes last);
- reads the tokens used from the reply (its JSON, or the usage in its server-sent events) and
  records them, priced, for that agent in the ledger's llm_spend; a reply that shows no usage is
  charged the call's worst case. Spend is measured here, once, for every backend, not parsed
  from transcripts.

`org launch` writes its files, in .lab/<program>/gateway/ (0700; no box can see .lab):

    keys.json     {"anthropic": {"key": ..., "upstream": ...}, ...}   0600
    tokens.json   {"<token>": "<agent>"}                               0600
    models.json   {"<agent>": "<model>"}: the one model each may call   0600
    port          the port it serves on, the same after a restart

and the runner's process (`org serve`, in the runner's pane) serves it while the org runs.
Keys come from the environment of `org launch` or from the file NANOLAB_KEYS_FILE names
(NAME=value lines, readable by its owner only).
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import stat
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from org import OrgError, shown
from org.agents.pacing import Pacer
from org.ledger import Ledger, ledger_path

# provider -> (key variable, base URL variable, default upstream)
PROVIDERS = {"anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
             "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1")}
BACKEND_PROVIDER = {"anthropic": "anthropic", "claude-code": "anthropic", "openai": "openai", "codex": "openai"}
KEYS_FILE = "NANOLAB_KEYS_FILE"
KEYS_FILE_RECORD = "keys-file.json"  # the last launch's keys file, for the boxes to hide
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "trailer",
              "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding"}
MAX_BODY = 32 << 20  # a request body past this is refused; a reply past this is passed on unparsed
# of a core, at most, that reading one agent's calls takes over a long stretch (org/agents/pacing.py): it runs
# at a run's priority, in the runner's process; an honest call's body (a context of 1 MB) parses in 10-30 ms
GATEWAY_SHARE = 0.05

# What the gateway forwards, (provider, method, path) -> whether the call spends (and is metered
# from its reply's usage). The backends call v1/messages, chat/completions and responses; Claude
# Code calls v1/messages?beta=true and counts tokens, which Anthropic does not charge for; codex
# calls responses. Anything else is refused unforwarded: message batches, files, OpenAI's batches,
# fine-tuning, images, stored responses... spend where no reply shows it, or reach what is not
# the agent's (the account's files, batches, fine-tuned models).
ENDPOINTS = {("anthropic", "POST", "v1/messages"): True,
             ("anthropic", "POST", "v1/messages/count_tokens"): False,
             ("openai", "POST", "chat/completions"): True,
             ("openai", "POST", "responses"): True}
# Tools the provider runs on the agent's behalf (by type prefix; Anthropic's carry a date), and the
# fields that ask for them: they reach the network from outside the box and charge per use
HOSTED = ("web_search", "web_fetch", "code_execution", "code_interpreter", "file_search", "image_generation", "mcp")
HOSTED_FIELDS = ("mcp_servers", "web_search_options")
URL_FIELDS = ("url", "image_url", "file_url")  # content the provider would fetch (fetched_urls)
# What asks for a dearer rate than prices.yaml's, which the gateway would charge at the standard
# one: Anthropic's 1M-token context (a higher rate past 200k input) and fast output, by beta
# header or field; a service tier other than the standard ones (OpenAI's priority and scale)
DEARER_BETAS = ("context-1m", "fast-mode")
STANDARD_TIERS = ("auto", "default", "standard_only", "flex")  # (flex is cheaper: charged as standard)
# A call's worst case, held against the budget while it is in flight (Gateway.reserve): its input
# is estimated from the body's size (English runs ~4 bytes a token, code and JSON ~3: 2 leaves
# room), its output is the body's max_tokens, or this where it sets none (codex's calls)
BYTES_PER_TOKEN = 2
DEFAULT_MAX_OUTPUT = 128_000
# an image or a document bills by its pixels or pages, not its bytes (a 6 KB PDF of 100 blank
# pages: some 150k tokens): a call that carries one holds the largest input a forwarded model takes
MEDIA_TYPES = ("image", "document", "input_image", "input_file", "image_url", "file", "input_audio",
               "computer_screenshot")
MEDIA_INPUT_TOKENS = 400_000
WAIT_S = 60  # how long a call near the cap waits for the calls in flight to be metered


class GatewayError(OrgError):
    pass


# --- setting it up (org launch) -----------------------------------------------------------------

def gateway_dir(lab_dir: Path) -> Path:
    return Path(lab_dir) / "gateway"


def read_keys(environ: dict) -> dict[str, str]:
    """{provider: key} from the environment, or from the 0600 file NANOLAB_KEYS_FILE names."""
    values = dict(environ)
    if environ.get(KEYS_FILE):
        path = Path(environ[KEYS_FILE])
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as e:
            raise GatewayError(f"{KEYS_FILE}={path}: cannot read it: {e.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise GatewayError(f"{KEYS_FILE}={path}: readable by others (mode {stat.S_IMODE(mode):o}); "
                               f"chmod 600 {path}")
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                name, eq, value = line.partition("=")
                if not eq:
                    raise GatewayError(f"{path}: line {n}: expected NAME=value")
                values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return {p: values[key] for p, (key, _, _) in PROVIDERS.items() if values.get(key)}


def prepare(lab_dir: Path, agents: dict[str, str], environ: dict, models: dict[str, str] | None = None) -> dict[str, str]:
    """Write the gateway's files for `agents` ({name: backend}); returns {agent: token}. The
    tokens are new at every launch: an agent's old token dies with the launch that gave it. With
    `models` ({name: model}, as `org launch` gives), each token calls its agent's model only."""
    keys = read_keys(environ)
    needed = {BACKEND_PROVIDER[b] for b in agents.values() if b in BACKEND_PROVIDER}
    folder = gateway_dir(lab_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    upstreams = {p: {"key": keys[p], "upstream": environ.get(PROVIDERS[p][1]) or PROVIDERS[p][2]}
                 for p in needed if p in keys}
    tokens = {name: f"nanolab-{name}-{secrets.token_urlsafe(24)}" for name, b in agents.items()
              if b in BACKEND_PROVIDER}
    _write_private(folder / "keys.json", json.dumps(upstreams))
    if environ.get(KEYS_FILE):  # for every box to hide (org/sandbox.py): no pane has its name
        named = Path(environ[KEYS_FILE]).expanduser()
        _write_private(folder / KEYS_FILE_RECORD, json.dumps(sorted({str(named.absolute()), str(named.resolve())})))
    _write_private(folder / "tokens.json", json.dumps({t: a for a, t in tokens.items()}))
    _write_private(folder / "models.json", json.dumps(models or {}))
    try:  # the last launch's port, if it is still free
        kept = int((folder / "port").read_text())
    except (OSError, ValueError):
        kept = None
    if kept is None or not port_is_free(kept):
        _write_private(folder / "port", str(free_port()))
    return tokens


def _write_private(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def client_config(lab_dir: Path, agent: str, backend: str) -> tuple[str, str] | None:
    """(base URL, token) for an agent's model client while its org's gateway is set up, or None
    (then the model is called directly with the key in the environment, as `org agent` by hand)."""
    folder = gateway_dir(lab_dir)
    try:
        tokens = json.loads((folder / "tokens.json").read_text())
        port = int((folder / "port").read_text())
    except (OSError, ValueError):
        return None
    token = next((t for t, a in tokens.items() if a == agent), None)
    provider = BACKEND_PROVIDER.get(backend)
    if token is None or provider is None:
        return None
    return f"http://127.0.0.1:{port}/{provider}", token


# --- serving -------------------------------------------------------------------------------------

class Refused(Exception):
    """A call the gateway answers itself, forwarding nothing."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


class Gateway:
    """The server, in a thread of the process that holds the keys."""

    def __init__(self, lab_dir: Path, program: str, prices: dict | None = None, say=print):
        from org.agents.spend import load_prices
        folder = gateway_dir(lab_dir)
        self.keys = json.loads((folder / "keys.json").read_text())
        self.tokens = json.loads((folder / "tokens.json").read_text())
        models = folder / "models.json"
        self.models = json.loads(models.read_text()) if models.exists() else {}
        self.ledger_path, self.program = ledger_path(lab_dir), program
        self.prices, self.say = prices or load_prices(), lambda line: say(shown(line))  # (a path, a model:
        # the agent's words, in the runner's pane: an escape sequence there cleared it or wrote the clipboard)
        self.parsing = threading.BoundedSemaphore(2)
        self.pacers: dict[str, Pacer] = {}  # an agent's: reading its calls is the harness's work (32 MB of `[{},..]`
        # refused after 4.3 CPU-s of parsing), at a run's priority (GATEWAY_SHARE)
        self.settled = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", int((folder / "port").read_text())), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="gateway")
        with Ledger(self.ledger_path) as ledger:  # (bound: no other gateway serves this lab)
            lost = ledger.charge_held(program)
        if lost:
            self.say(f"gateway: {len(lost)} call(s) in flight when the gateway last stopped, never metered, are charged "
                     f"their worst case: ${sum(r['dollars'] for r in lost):.4f} ({', '.join(sorted({r['agent'] for r in lost}))})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def reserve(self, agent: str, model: str, worst) -> int | None:
        """Hold a call's worst case (Usage, or None for a call that spends nothing) against the
        budget, as a row of the ledger's llm_spend, before it goes upstream; the row's id. A call
        goes ahead while the spend plus what the calls in flight may still cost is under the cap
        (and the agent's own, under its budget.agent_llm_dollars), so calls sent at once cannot all
        pass before any is metered: together they pass the cap by one call's cost at most, as calls
        made one at a time do. The hold is in the ledger, not in memory, so a call in flight when
        the gateway dies is charged its worst case (charge_held, at the next start), not nothing.
        Near the cap a call waits for those in flight to be metered (WAIT_S at most, then a 429)."""
        from org.agents.spend import agent_dollars, share_spent
        cost, deadline = 0.0 if worst is None else self.price(model, worst), time.monotonic() + WAIT_S
        with self.settled:
            while True:
                with Ledger(self.ledger_path) as ledger, ledger.tx():  # the check and the hold at once
                    spend, budget = ledger.spend(self.program), ledger.budget(self.program)
                    spent, limit, share = spend["dollars"], budget["total_llm_dollars"], budget.get("agent_llm_dollars")
                    if spent >= limit:
                        raise Refused(403, "permission_error",
                                      f"the program's LLM budget is spent (${spent:.4f} of ${limit:g})")
                    if (mine := share_spent(agent, spend, budget)) and cost:
                        raise Refused(403, "permission_error", mine)
                    if worst is None:  # counting tokens: free, and held by nothing
                        return None
                    held_mine = agent_dollars(spend, agent) + spend["held"].get(agent, 0.0)
                    if (spent + sum(spend["held"].values()) < limit and (share is None or held_mine < share)) or not cost:
                        return ledger.record_spend(self.program, agent, model, worst.tokens_in, worst.output,
                                                   cost, held=True)
                if time.monotonic() >= deadline:
                    raise Refused(429, "rate_limit_error", f"calls in flight may spend the rest of the program's "
                                  f"LLM budget (${limit - spent:.4f} left): try again once they end",
                                  {"retry-after": "10"})
                self.settled.wait(1.0)

    def settle(self, hold: int | None, metered: tuple | None = None):
        """A call's hold becomes what it spent, metered = (tokens in, out, dollars); or, with
        none, goes (the provider refused the call, or it never reached it)."""
        if hold is not None:
            with Ledger(self.ledger_path) as ledger:
                ledger.meter_spend(hold, *metered) if metered else ledger.let_go(hold)
        with self.settled:
            self.settled.notify_all()

    def price(self, model: str, usage) -> float:
        from org.agents.spend import dollars
        return dollars(model, usage, self.prices)

    def unpriced_variant(self, model: str) -> str | None:
        from org.agents.spend import unpriced_variant
        return unpriced_variant(model, self.prices)

    def meter(self, hold: int, agent: str, model: str, usage, worst):
        """Record a call's usage for its agent, in place of its hold. A reply that shows none (a
        stream that did not ask for it, a body that does not parse) is charged the call's worst case."""
        note = ""
        if not (usage.tokens_in or usage.output):
            usage, note = worst, " (its reply showed no usage: charged its worst case)"
        cost = self.price(model, usage)
        self.settle(hold, (usage.tokens_in, usage.output, cost))
        self.say(f"gateway: {agent} {model}: {usage.tokens_in} in, {usage.output} out, ${cost:.4f}{note}")


def endpoint(method: str, path: str) -> tuple[str, str, bool]:
    """(provider, the path upstream with its query, whether the call spends) for a call the
    gateway forwards; Refused for any other."""
    where, _, query = path.partition("?")
    provider, _, rest = where.lstrip("/").partition("/")
    spends = ENDPOINTS.get((provider, method, rest))
    if spends is None:
        allowed = ", ".join(f"{m} /{p}/{r}" for (p, m, r) in ENDPOINTS)
        raise Refused(403, "permission_error", f"the gateway does not forward {method} {path[:300]}: "
                      f"it forwards only {allowed}")
    return provider, rest + (f"?{query}" if query else ""), spends


def same_model(model: str, given: str) -> bool:
    """The model given, or a dated id of it (claude-sonnet-4-5-20250929, gpt-5-2025-08-07)."""
    date = model.removeprefix(given + "-") if model.startswith(given + "-") else None
    return model == given or (date is not None and date.replace("-", "").isdigit() and len(date.replace("-", "")) == 8)


def hosted_tools(fields: dict) -> list[str]:
    """The tools of a call that the provider runs itself (HOSTED: web search and fetch, code
    execution, file search, MCP servers), by type; those the client runs (functions, custom
    tools, Claude Code's and codex's own) pass."""
    tools = fields.get("tools") if isinstance(fields.get("tools"), list) else []
    kinds = [t.get("type") for t in tools if isinstance(t, dict) and isinstance(t.get("type"), str)]
    asked = {k for k in HOSTED_FIELDS if fields.get(k) not in (None, [])}  # `web_search_options: {}` asks for search
    return sorted({k for k in kinds if k.startswith(HOSTED)} | asked)


def fetched_urls(value) -> list[str]:
    """The http(s) URLs of a call's content (an image, a document or a file given by URL: Anthropic's
    `source: {type: url, url}`, OpenAI's `image_url` and `file_url`), which the provider fetches."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if key in URL_FIELDS and isinstance(inner, str) and inner.strip().lower().startswith(("http:", "https:")):
                    found.append(inner.strip())
                else:
                    stack.append(inner)
    return found


def carries_media(value) -> bool:
    """Whether a call's content holds a block of one of MEDIA_TYPES, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in MEDIA_TYPES:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


SERVER_CONTEXT = ("previous_response_id", "conversation")  # Responses input the provider keeps (and a prompt's id)


def each_key_once(pairs: list[tuple]) -> dict:
    """json.loads's object_pairs_hook: an object naming a key twice is a ValueError (Python keeps
    the last; `{"model": <dear>, ..., "model": <given>}` passed the model check as the given one)."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise ValueError(f"a key named twice: {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def dearer_rate(fields: dict, betas: list[str]) -> list[str]:
    """What in a call asks for a dearer rate than the gateway prices (DEARER_BETAS in its
    anthropic-beta headers, a service tier not in STANDARD_TIERS, a speed not the standard one, an
    inference_geo other than global)."""
    tokens = [t.strip().lower() for header in betas for t in header.split(",")]
    found = [f"anthropic-beta {t}" for t in tokens if t.startswith(DEARER_BETAS)]
    if fields.get("service_tier") not in (None, *STANDARD_TIERS):
        found.append(f"service_tier {str(fields['service_tier'])[:40]}")
    if fields.get("speed") not in (None, "standard"):
        found.append(f"speed {str(fields['speed'])[:40]}")
    if fields.get("inference_geo") not in (None, "global"):  # (Anthropic's US-only inference: 1.1x on newer models)
        found.append(f"inference_geo {str(fields['inference_geo'])[:40]}")
    return found


def worst_case(fields: dict, size: int):
    """The most a call may use: the output its body allows (max_tokens, OpenAI's
    max_completion_tokens or max_output_tokens, times its n choices; DEFAULT_MAX_OUTPUT where it
    sets none) and its input estimated from the body's size (or MEDIA_INPUT_TOKENS, with media),
    all priced as hour-long cache writes (the dearest input)."""
    from org.agents.models import Usage
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0
    limits = [fields[k] for k in ("max_tokens", "max_completion_tokens", "max_output_tokens") if count(fields.get(k))]
    choices = fields["n"] if count(fields.get("n")) else 1
    tokens = max(size // BYTES_PER_TOKEN + 1, MEDIA_INPUT_TOKENS if carries_media(fields) else 0)
    return Usage(cache_write=tokens, cache_write_1h=tokens, output=max(limits, default=DEFAULT_MAX_OUTPUT) * choices)


def _handler(gateway: Gateway):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one call per connection; a stream ends when it closes
        timeout = 120  # a socket operation's: an agent that stops reading (or sending) is served no more, and
        # its call is metered and settled (relay reads the reply on)

        def log_message(self, *args):
            pass

        def do_POST(self):
            try:
                self.call()
            except Refused as r:
                gateway.say(f"gateway: refused {self.command} {self.path[:200]}: {r.message}")
                self.error(r)

        do_GET = do_PUT = do_PATCH = do_DELETE = do_POST  # refused, but with an answer an SDK reads

        def call(self):
            token = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ").strip()
            agent = gateway.tokens.get(token)
            if agent is None:
                raise Refused(401, "authentication_error", "unknown gateway token")
            provider = self.path.lstrip("/").partition("/")[0]
            if provider not in gateway.keys:
                raise Refused(404, "not_found_error", f"the gateway has no key for {provider!r}")
            with gateway.pacers.setdefault(agent, Pacer(GATEWAY_SHARE, children=False)).paced():  # (reading it is the harness's work)
                body = self.body()  # read before any refusal, so that the agent's client reads the refusal
                provider, upstream_path, spends = endpoint(self.command, self.path)
                # a body past 1 MB is parsed two at a time (as objects, 27x its size: 32 at once took the runner's
                # memory), and not kept while the call waits and streams
                with gateway.parsing if len(body) > 1 << 20 else contextlib.nullcontext():
                    model, worst = self.checked(body, spends, agent)
            from org.agents.models import Usage
            from org.agents.spend import usage_of
            hold = gateway.reserve(agent, model, worst if spends else None)
            try:
                status, content_type, seen = self.forward(provider, upstream_path, body)
            except Refused:  # it never reached the provider: free
                gateway.settle(hold)
                raise
            except BaseException:  # it may have: its worst case (a crash here leaves the hold, charged so too)
                gateway.settle(hold) if hold is None else gateway.meter(hold, agent, model, Usage(), worst)
                raise
            if status != 200 or hold is None:  # the provider refused it (or it spends nothing)
                gateway.settle(hold)
            else:
                gateway.meter(hold, agent, model, usage_of(seen, content_type, provider), worst)

        def checked(self, body: bytes, spends: bool, agent: str):
            """(model, worst case) of a call the gateway forwards as it is; Refused otherwise."""
            try:
                fields = json.loads(body or b"{}", object_pairs_hook=each_key_once)
            except ValueError:
                fields = None
            if spends and not isinstance(fields, dict):
                raise Refused(400, "invalid_request_error", "the gateway forwards a call that spends only as one JSON "
                              "object naming each key once: it must read the call as the provider will (of a key "
                              "named twice, its parser may take the other)")
            fields = fields if isinstance(fields, dict) else {}
            # the hold's input, as the provider reads it (4 MB of spaces around a word held $37.75 of the budget,
            # and every other agent's call waited for it); a lone surrogate (a JS client's cut string) counts too
            size = len(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode(errors="surrogatepass"))
            stored = [k for k in SERVER_CONTEXT if fields.get(k)] + ["prompt"] * isinstance(fields.get("prompt"), dict)
            if spends and stored:
                raise Refused(400, "invalid_request_error", f"the gateway does not forward calls that name context "
                              f"kept by the provider ({', '.join(stored)}): it holds a call's worst case from its "
                              "body, and the provider charges for the context too; send the input itself")
            if spends and fields.get("background"):
                raise Refused(400, "invalid_request_error", "background responses are not forwarded: the "
                              "gateway meters a call from its reply, and theirs comes later")
            hosted = hosted_tools(fields)
            if hosted:
                raise Refused(400, "invalid_request_error", f"the gateway does not forward hosted tools ({', '.join(hosted)}): "
                              "the provider would reach the network for the agent, outside its box, for fees no "
                              "reply's usage shows; tools the agent's own client runs are forwarded")
            dearer = dearer_rate(fields, self.headers.get_all("anthropic-beta") or [])
            if dearer:
                raise Refused(400, "invalid_request_error", f"the gateway does not forward calls at a dearer rate than "
                              f"its prices ({', '.join(dearer)}): the budget would be charged less than was spent")
            model = fields.get("model") if isinstance(fields.get("model"), str) else "unknown"
            variant = gateway.unpriced_variant(model)
            if spends and variant:
                raise Refused(400, "invalid_request_error", f"the gateway does not forward {model[:80]!r}: org/prices.yaml "
                              f"prices it only as its family, and {variant!r} names a dearer variant (or one that "
                              "searches the web); give it a price of its own there to allow it")
            given = gateway.models.get(agent)
            if spends and given and not same_model(model, given):
                raise Refused(403, "permission_error", f"agent {agent} is given {given!r}: the gateway does not forward "
                              f"its calls for {model[:80]!r} (an org is judged by the models it was given)")
            fetched = fetched_urls(fields)
            if fetched:
                raise Refused(400, "invalid_request_error", f"the gateway does not forward content given by URL "
                              f"({fetched[0][:100]}): the provider would fetch it for the agent, outside its box; "
                              "send the content itself")
            return model, worst_case(fields, size)

        def body(self) -> bytes:
            given = (self.headers.get("content-length") or "0").strip()
            if not (given.isascii() and given.isdigit()):  # (-1 read the body to its end, past MAX_BODY: the runner's memory)
                raise Refused(400, "invalid_request_error", f"Content-Length {given[:40]!r} is not a count of bytes")
            if int(given) > MAX_BODY:
                raise Refused(413, "request_too_large", f"request body over {MAX_BODY} bytes")
            return self.rfile.read(int(given))

        def forward(self, provider: str, path: str, body: bytes) -> tuple[int, str, bytes]:
            """Send the call upstream with the real key and pass the reply on as it arrives:
            (status, content type, the reply's first MAX_BODY bytes)."""
            upstream = urllib.parse.urlsplit(gateway.keys[provider]["upstream"])
            key = gateway.keys[provider]["key"]
            conn = (http.client.HTTPSConnection if upstream.scheme == "https" else http.client.HTTPConnection)(
                upstream.netloc, timeout=600)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP | {"authorization", "x-api-key"}}
            headers.update({"x-api-key": key} if provider == "anthropic" else {"authorization": f"Bearer {key}"})
            headers["accept-encoding"] = "identity"  # the usage is read from the reply as it passes
            try:
                conn.request(self.command, upstream.path.rstrip("/") + "/" + path, body=body, headers=headers)
                reply = conn.getresponse()
            except OSError as e:
                raise Refused(502, "api_error", f"the gateway could not reach {provider}: {e}") from None
            try:
                return reply.status, reply.getheader("content-type", ""), self.relay(reply)
            finally:
                conn.close()

        def relay(self, reply) -> bytes:
            """Pass the reply on; keep what the usage is read from. If the agent hangs up, read on
            to the end all the same: a stream's usage comes last (Anthropic's output count), and
            a client that hung up just before it would have had the call charged nothing."""
            seen, listening = bytearray(), self.send(reply.status, reply.getheaders())
            try:
                while chunk := reply.read1(65536):
                    if len(seen) < MAX_BODY:
                        seen += chunk
                    if listening:
                        listening = self.send_chunk(chunk)
            except OSError:
                pass  # upstream broke off: what it said of its usage so far is what is metered
            return bytes(seen)

        def send(self, status: int, headers) -> bool:
            """The reply's status and headers to the agent; whether it is still listening."""
            try:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("connection", "close")
                self.end_headers()
                return True
            except OSError:
                return False

        def send_chunk(self, chunk: bytes) -> bool:
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
                return True
            except OSError:
                return False

        def error(self, refused: Refused):
            data = json.dumps({"type": "error", "error": {"type": refused.kind, "message": refused.message}}).encode()
            self.send_response(refused.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in refused.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
