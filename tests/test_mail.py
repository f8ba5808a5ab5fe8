"""Comms as plain files: inboxes (write-then-rename, acknowledged by the reader), the board and standups."""
import threading

from org.mail import Mail


def test_a_message_is_delivered_once_and_acknowledged_by_moving_it(tmp_path):
    mail = Mail(tmp_path)
    sent = mail.send("chief", "junior-1", "Please test softcap=0.")
    [message] = mail.inbox("junior-1")
    assert (message["id"], message["from"], message["text"]) == (sent["id"], "chief", "Please test softcap=0.")
    assert mail.inbox("junior-1") == [message]  # unread until acknowledged: a crash loses nothing
    mail.ack("junior-1", message)
    mail.ack("junior-1", message)  # twice is harmless
    assert mail.inbox("junior-1") == []
    assert [m["id"] for m in mail.read_messages("junior-1")] == [sent["id"]]


def test_messages_arrive_in_order_and_no_half_written_file_is_ever_visible(tmp_path):
    mail = Mail(tmp_path)
    for i in range(20):
        mail.send("chief", "junior-1", f"message {i}")
    assert [m["text"] for m in mail.inbox("junior-1")] == [f"message {i}" for i in range(20)]
    assert list((tmp_path / "mail" / "junior-1" / "tmp").iterdir()) == []  # staged, then renamed
    assert all(p.suffix == ".json" for p in (tmp_path / "mail" / "junior-1" / "inbox").iterdir())


def test_concurrent_senders_lose_nothing(tmp_path):
    mail = Mail(tmp_path)
    senders = [threading.Thread(target=lambda n=n: [mail.send(f"junior-{n}", "chief", f"{n}:{i}") for i in range(20)])
               for n in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    texts = {m["text"] for m in mail.inbox("chief")}
    assert texts == {f"{n}:{i}" for n in range(4) for i in range(20)}  # (20: one sender's most unread)


def test_the_board_is_append_only_and_entries_never_interleave(tmp_path):
    mail = Mail(tmp_path)
    assert mail.board() == ""
    writers = [threading.Thread(target=lambda n=n: [mail.post(f"agent-{n}", f"entry {n}.{i}\n" + "x" * 3000)
                                                    for i in range(10)]) for n in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    board = mail.board()
    entries = board.split("\n## ")[1:]
    assert len(entries) == 40
    for entry in entries:  # each entry is whole: its header, its line, its 3000 x's
        header, _, body = entry.partition("\n\n")
        who = header.split(" · ")[1]
        assert body.startswith(f"> entry {who.split('-')[1]}.") and body.rstrip().endswith("x" * 3000)


def test_standups_are_one_file_each(tmp_path):
    mail = Mail(tmp_path)
    mail.write_standup("junior-1", "Did: baseline. Learned: noise ~0.01 bpb. Next: no-softcap.")
    mail.write_standup("junior-1", "Did: no-softcap. Verdict: no regression.")
    standups = mail.standups("junior-1")
    assert len(standups) == 2 and "no-softcap" in standups[0] and "Verdict" in standups[1]
    assert standups[0].startswith("# junior-1 · ")
