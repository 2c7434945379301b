from __future__ import annotations

import os

from task_supervisor.wire.protocol import MAX_LINE_BYTES, Reader, Reporter


def test_messages_cross_the_pipe_whole_even_when_split():
    read_fd, write_fd = os.pipe()
    Reporter(write_fd).send("task_started", task_id="abc", path="x.y")
    Reporter(write_fd).send("task_finished", task_id="abc", status="SUCCESSFUL")
    data = os.read(read_fd, 4096)
    reader = Reader(read_fd)
    assert reader.feed(data[:10]) == []
    messages = reader.feed(data[10:])
    assert [m["event"] for m in messages] == ["task_started", "task_finished"]
    assert messages[0]["path"] == "x.y"
    os.close(read_fd)
    os.close(write_fd)


def test_long_fields_are_shortened_below_pipe_buf():
    read_fd, write_fd = os.pipe()
    Reporter(write_fd).send("boot_failed", reason="x" * 10000)
    data = os.read(read_fd, 65536)
    assert len(data) < MAX_LINE_BYTES
    assert Reader(read_fd).feed(data)[0]["event"] == "boot_failed"


def test_a_dead_reader_does_not_break_the_child():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    Reporter(write_fd).send("ready")  # EPIPE is swallowed
    os.close(write_fd)
