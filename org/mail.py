"""
Comms between agents (and people): plain files under the program's lab directory.

    .lab/<program>/mail/<agent>/inbox/<stamp>-<sender>-<id>.json   delivered, not yet read
    .lab/<program>/mail/<agent>/read/...                           read (acknowledged)
    .lab/<program>/board.md                                        append-only decisions and verdicts
    .lab/<program>/standups/<agent>/<stamp>.md                     one file per standup

A message is a JSON record whose sender the harness sets from the calling agent (an agent's
tools) or the person (`org say` writes as "human"); it is never parsed from text. Wherever a body
is shown, to a model or on the board, every line of it is quoted ("> "): the harness's header is
the only unquoted line, so a body that imitates a header is shown as body.

A message is written to mail/<agent>/tmp/ and renamed into inbox/, so a reader never sees half
a message. Reading is two steps, inbox() then ack(): the agent loop records a message in its
transcript before acknowledging it, so a crash in between delivers it again (the transcript
drops the duplicate by id) rather than losing it.

    mail = Mail(lab.state_dir("softcap"))
    mail.send("chief", "junior-1", "Please test softcap=0 against the baseline.")
    for message in mail.inbox("junior-1"):
        ...
        mail.ack("junior-1", message)
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from org import OrgError, held, write_atomically

EVERYONE = "all"  # send_message(to="all") writes one copy to every other agent's inbox
HUMAN = "human"   # the people running the org: only `org say` writes as them
MAX_MESSAGE_CHARS = 16_000  # a message (and a board entry): its reader's model is charged for each one
MAX_UNREAD_FROM_ONE = 20    # messages one sender may have waiting in one inbox (people: no bound)
MAX_BOARD_BYTES = 8 << 20   # the board: past this, agents' posts are refused (a loop of posts filled the disk)
MAX_BOARD_FROM_ONE = 1 << 20  # one agent's entries on it (one agent's loop took the whole board from the rest)
BOARD_READ_BYTES = 256 << 10  # what a reader takes of the board: its end (every reader read it whole)
TURN_MAIL_BYTES = 64_000    # the mail a reader takes in at one turn (a codex turn's prompt is one argument,
                            # 128 KiB at most); the rest waits for its next turns


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp() -> str:
    """Sorts in creation order: UTC time plus nanoseconds."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 10**9:09d}"


def quote(text: str) -> str:
    """Every line of a body prefixed with '> ' (blank lines with '>'), so no line of it can pass
    for a header the harness writes."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.strip().splitlines()) or ">"


def unquote(text: str) -> str:
    return "\n".join(line[2:] if line.startswith("> ") else line.lstrip(">") for line in text.splitlines())


def format_mail(messages: list[dict], waiting: list[dict] = ()) -> str:
    """Each message as the harness's header from the record, then its body quoted: a body that
    imitates a header stays inside its own message. Then what waits for a later turn."""
    text = "\n\n".join(f"[message from {m['from']} at {m.get('sent_at', '?')}]\n{quote(str(m['text']))}"
                       for m in messages)
    if not waiting:
        return text
    senders = Counter(str(m.get("from")) for m in waiting)
    return text + (f"\n\n[{len(waiting)} more message(s) wait in your inbox, from "
                   f"{', '.join(f'{s} ({n})' for s, n in senders.items())}: they come at your next turns]")


def sender_of(file_name: str) -> str:
    """The sender in an inbox file's name, <stamp>-<sender>-<id>.json (the stamp: 25 characters)."""
    return file_name[26:].removesuffix(".json").rsplit("-", 1)[0]


def a_turns_mail(messages: list[dict], max_bytes: int = TURN_MAIL_BYTES) -> tuple[list[dict], list[dict]]:
    """(what a reader takes in now, what waits): the senders' oldest messages in turn, as many as
    max_bytes of format_mail's text holds (one at least), shown oldest first. Everything a reader
    takes in is charged to its model, at that turn and every later one: a sender who writes a
    hundred messages has its share of a turn, and its readers' other mail is not stuck behind them."""
    queues: dict[str, list[dict]] = {}
    for m in messages:
        queues.setdefault(str(m.get("from")), []).append(m)
    longest = max((len(q) for q in queues.values()), default=0)
    in_turn = [q[rank] for rank in range(longest) for q in queues.values() if rank < len(q)]
    taken, size = [], 0
    for m in in_turn:
        size += len(format_mail([m]).encode(errors="replace")) + 2
        if taken and size > max_bytes:
            break
        taken.append(m)
    ids = {m["id"] for m in taken}
    return [m for m in messages if m["id"] in ids], [m for m in messages if m["id"] not in ids]


def check_length(text: str):
    if len(text) > MAX_MESSAGE_CHARS:
        raise OrgError(f"a message of {len(text)} characters: one holds {MAX_MESSAGE_CHARS} at most (write the "
                       "rest in a file of your worktree and name it)")


class Mail:
    def __init__(self, lab_dir: str | Path):
        self.dir = Path(lab_dir)
        self.board_path = self.dir / "board.md"

    # --- messages ------------------------------------------------------------------------

    def send(self, sender: str, to: str, text: str) -> dict:
        """Deliver one message to `to`'s inbox; returns it (with its id). A message is short:
        130 KB to a Codex agent went whole into its command line (E2BIG: its pane crashed), and
        every message is charged to its reader's budget at every later turn."""
        check_length(text)
        self.check_room(sender, to)
        message = {"id": uuid.uuid4().hex[:12], "from": sender, "to": to, "text": text,
                   "sent_at": now()}
        name = f"{stamp()}-{sender}-{message['id']}.json"
        staged = self._box(to, "tmp") / name
        write_atomically(staged, json.dumps(message, indent=1))
        self._box(to, "inbox").mkdir(parents=True, exist_ok=True)
        os.rename(staged, self._box(to, "inbox") / name)
        return message

    def check_room(self, sender: str, to: str):
        """A sender's unread messages in one inbox are bounded (people's are not): a flood is refused
        at the sender, on the harness's disk and its reader's budget alike."""
        if sender == HUMAN:
            return
        unread = sum(sender_of(p.name) == sender for p in self._box(to, "inbox").glob("*.json"))
        if unread >= MAX_UNREAD_FROM_ONE:
            raise OrgError(f"{to} has {unread} unread messages from you ({MAX_UNREAD_FROM_ONE} at most): "
                           f"send more once they have read some")

    def inbox(self, agent: str) -> list[dict]:
        """Unread messages, oldest first; each keeps its file name for ack()."""
        messages = []
        for path in sorted(self._box(agent, "inbox").glob("*.json")):
            try:
                message = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:  # never happens with renames; never lose it
                message = {"id": path.stem, "from": "?", "text": f"(unreadable message file: {e})"}
            messages.append({**message, "file": path.name})
        return messages

    def ack(self, agent: str, message: dict):
        """Acknowledge a message: move it from inbox/ to read/."""
        read = self._box(agent, "read")
        read.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self._box(agent, "inbox") / message["file"], read / message["file"])
        except FileNotFoundError:
            pass  # already acknowledged

    def read_messages(self, agent: str) -> list[dict]:
        """Messages already read, oldest first (for people and reports)."""
        return [json.loads(p.read_text()) for p in sorted(self._box(agent, "read").glob("*.json"))]

    def _box(self, agent: str, box: str) -> Path:
        return self.dir / "mail" / agent / box

    # --- the board -----------------------------------------------------------------------

    def post(self, who: str, text: str) -> str:
        """Append one entry to board.md: the harness's header, then the text quoted. One locked
        O_APPEND write: entries never interleave."""
        check_length(text)
        entry = f"\n## {now()} · {who}\n\n{quote(text)}\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.board_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            with held(fd):
                size = os.fstat(fd).st_size
                if who != HUMAN and size > MAX_BOARD_BYTES:
                    raise OrgError(f"the board holds {MAX_BOARD_BYTES >> 20} MB, all it takes from agents: send the "
                                   "result to who needs it, or put it in a standup")
                if who != HUMAN and size > MAX_BOARD_FROM_ONE and self.posted_by(who) > MAX_BOARD_FROM_ONE:
                    raise OrgError(f"your entries on the board hold over {MAX_BOARD_FROM_ONE >> 20} MB, your share of it: "
                                   "send the result to who needs it, or put it in a standup")
                os.write(fd, entry.encode())
                os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def posted_by(self, who: str) -> int:
        """The bytes of who's entries on the board (each from its header, which the harness writes)."""
        text = self.board_path.read_bytes()
        heads = [(m.start(), m.group(1).decode()) for m in re.finditer(rb"^## \S+ \xc2\xb7 (\S+)$", text, re.M)]
        ends = [start for start, _ in heads[1:]] + [len(text)]
        return sum(end - start for (start, name), end in zip(heads, ends) if name == who)

    def board(self) -> str:
        """The board, or its last BOARD_READ_BYTES from an entry's start, said so."""
        try:
            with open(self.board_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - BOARD_READ_BYTES))
                data = f.read(BOARD_READ_BYTES)
        except FileNotFoundError:
            return ""
        if size <= BOARD_READ_BYTES:
            return data.decode(errors="replace")
        start = max(data.find(b"\n## "), 0)  # (an entry's header is the harness's: no quoted line starts with ##)
        hidden = size - len(data) + start
        return f"[the board's first {hidden} bytes are not shown]\n" + data[start:].decode(errors="replace")

    # --- standups ------------------------------------------------------------------------

    def write_standup(self, agent: str, text: str) -> Path:
        check_length(text)
        path = self.dir / "standups" / agent / f"{stamp()}.md"
        write_atomically(path, f"# {agent} · {now()}\n\n{text.strip()}\n")
        return path

    def standups(self, agent: str) -> list[str]:
        return [p.read_text() for p in sorted((self.dir / "standups" / agent).glob("*.md"))]
