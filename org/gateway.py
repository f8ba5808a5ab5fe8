"""
The LLM gateway: the one process of a launched org that holds the API keys.

Agents never see a key. Each gets its own token, and its model client talks to the gateway on
127.0.0.1 with the token where a key would go (x-api-key, or Authorization: Bearer):

    POST http://127.0.0.1:PORT/anthropic/v1/messages        -> ANTHROPIC_BASE_URL/v1/messages
    POST http://127.0.0.1:PORT/openai/chat/completions      -> OPENAI_BASE_URL/chat/completions

For every call the gateway
- finds the agent by its token (401 for any other token);
- refuses the call once the program's LLM spend has reached budget.total_llm_dollars, the
  ledger's (403, an error body the SDKs read);
- forwards it with the real key, streaming the reply back as it arrives;
- reads the tokens used from the reply (its JSON, or the usage in its server-sent events) and
  records them, priced, for that agent in the ledger's llm_spend. Spend is measured here, once,
  for every backend, not parsed from transcripts.

`org launch` writes its files, in .lab/<program>/gateway/ (0700; no box can see .lab):

    keys.json     {"anthropic": {"key": ..., "upstream": ...}, ...}   0600
    tokens.json   {"<token>": "<agent>"}                               0600
    port          the port it serves on, the same after a restart

and the runner's process (`org serve`, in the runner's pane) serves it while the org runs.
Keys come from the environment of `org launch` or from the file NANOLAB_KEYS_FILE names
(NAME=value lines, readable by its owner only).
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import stat
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from org import OrgError
from org.ledger import Ledger, ledger_path

# provider -> (key variable, base URL variable, default upstream)
PROVIDERS = {"anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
             "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1")}
BACKEND_PROVIDER = {"anthropic": "anthropic", "claude-code": "anthropic", "openai": "openai", "codex": "openai"}
KEYS_FILE = "NANOLAB_KEYS_FILE"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "trailer",
              "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding"}
MAX_BODY = 32 << 20  # a request body past this is refused; a reply past this is passed on unparsed


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


def prepare(lab_dir: Path, agents: dict[str, str], environ: dict) -> dict[str, str]:
    """Write the gateway's files for `agents` ({name: backend}); returns {agent: token}. The
    tokens are new at every launch: an agent's old token dies with the launch that gave it."""
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
    _write_private(folder / "tokens.json", json.dumps({t: a for a, t in tokens.items()}))
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

class Gateway:
    """The server, in a thread of the process that holds the keys."""

    def __init__(self, lab_dir: Path, program: str, prices: dict | None = None, say=print):
        from org.agents.spend import load_prices
        folder = gateway_dir(lab_dir)
        self.keys = json.loads((folder / "keys.json").read_text())
        self.tokens = json.loads((folder / "tokens.json").read_text())
        self.ledger_path, self.program = ledger_path(lab_dir), program
        self.prices, self.say = prices or load_prices(), say
        self.server = ThreadingHTTPServer(("127.0.0.1", int((folder / "port").read_text())), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="gateway")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def refusal(self) -> str | None:
        with Ledger(self.ledger_path) as ledger:
            spent, limit = ledger.spend(self.program)["dollars"], ledger.budget(self.program)["total_llm_dollars"]
        if spent >= limit:
            return f"the program's LLM budget is spent (${spent:.4f} of ${limit:g})"
        return None

    def record(self, agent: str, model: str, usage) -> float:
        from org.agents.spend import dollars
        cost = dollars(model, usage, self.prices)
        with Ledger(self.ledger_path) as ledger:
            ledger.record_spend(self.program, agent, model, usage.tokens_in, usage.output, cost)
        return cost


def _handler(gateway: Gateway):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one call per connection; a stream ends when it closes

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.do_POST()

        def do_POST(self):
            provider, _, rest = self.path.lstrip("/").partition("/")
            token = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ").strip()
            agent = gateway.tokens.get(token)
            if agent is None:
                return self.error(401, "authentication_error", "unknown gateway token")
            if provider not in gateway.keys:
                return self.error(404, "not_found_error", f"the gateway has no key for {provider!r}")
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                return self.error(413, "request_too_large", f"request body over {MAX_BODY} bytes")
            body = self.rfile.read(length)
            why = gateway.refusal()
            if why:
                gateway.say(f"gateway: refused {agent}: {why}")
                return self.error(403, "permission_error", why)
            try:
                model = json.loads(body or b"{}").get("model", "unknown")
            except (ValueError, AttributeError):
                model = "unknown"
            self.forward(agent, provider, rest, body, model)

        def forward(self, agent: str, provider: str, rest: str, body: bytes, model: str):
            upstream = urllib.parse.urlsplit(gateway.keys[provider]["upstream"])
            key = gateway.keys[provider]["key"]
            conn = (http.client.HTTPSConnection if upstream.scheme == "https" else http.client.HTTPConnection)(
                upstream.netloc, timeout=600)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP | {"authorization", "x-api-key"}}
            headers.update({"x-api-key": key} if provider == "anthropic" else {"authorization": f"Bearer {key}"})
            headers["accept-encoding"] = "identity"  # the usage is read from the reply as it passes
            try:
                conn.request(self.command, upstream.path.rstrip("/") + "/" + rest, body=body, headers=headers)
                reply = conn.getresponse()
            except OSError as e:
                return self.error(502, "api_error", f"the gateway could not reach {provider}: {e}")
            try:
                self.send_response(reply.status)
                for k, v in reply.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("connection", "close")
                self.end_headers()
                seen = bytearray()
                while chunk := reply.read1(65536):
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if len(seen) < MAX_BODY:
                        seen += chunk
            except OSError:
                pass  # the agent hung up; what was used is still recorded
            finally:
                conn.close()
            if reply.status == 200:
                usage = usage_of(bytes(seen), reply.getheader("content-type", ""), provider)
                cost = gateway.record(agent, model, usage)
                gateway.say(f"gateway: {agent} {model}: {usage.tokens_in} in, {usage.output} out, ${cost:.4f}")

        def error(self, status: int, kind: str, message: str):
            data = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# --- reading the usage ----------------------------------------------------------------------------

def usage_of(raw: bytes, content_type: str, provider: str):
    """The tokens a reply reports: from its JSON, or from the server-sent events of a stream
    (Anthropic: message_start, then message_delta's running output count; OpenAI: the last
    chunk's usage, or response.completed's)."""
    from org.agents.models import Usage
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
