"""What the orchestrator takes from a candidate (files, output, printed numbers), without a sandbox: fast unit tests."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
import torch

import prepare
from infra.sandbox.evaluation import score_logits
from infra.sandbox.output_capture import MAX_LINE_CHARS, BoundedLog, clean
from infra.sandbox.safe_files import UnsafeFile, copy_out, read_untrusted, remove_tree, tree_usage
from infra.sandbox.trial import reported_epochs
from infra.sandbox.watchdog import Watchdog
from infra.settings import Limits


def test_read_untrusted_takes_only_a_bounded_regular_file(tmp_path):
    (tmp_path / "ok.bin").write_bytes(b"12345")
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    (tmp_path / "target").write_text("secret")
    os.symlink(tmp_path / "target", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    assert read_untrusted(tmp_path, "ok.bin", 5) == b"12345"
    for name, message in [
        ("big.bin", "over the limit"),
        ("link", "not a regular file"),
        ("fifo", "not a regular file"),
        ("dir", "not a regular file"),
        ("missing", "no missing"),
        ("../target", "bad file name"),
    ]:
        with pytest.raises(UnsafeFile, match=message):
            read_untrusted(tmp_path, name, 10)


def test_read_untrusted_refuses_a_linked_directory(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "linked")
    with pytest.raises(UnsafeFile, match="not a plain directory"):
        read_untrusted(tmp_path / "linked", "f", 10)


def test_copy_out_never_writes_through_a_link_at_the_destination(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model").write_bytes(b"weights")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "dest")
    with pytest.raises(OSError):
        copy_out(tmp_path / "src", "model", tmp_path / "dest", 100)
    assert victim.read_text() == "precious"


def test_remove_tree_does_not_follow_links_and_handles_unreadable_dirs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "locked").mkdir(parents=True)
    (tree / "locked" / "f").write_text("x")
    os.symlink(outside, tree / "link")
    os.mkfifo(tree / "fifo")
    (tree / "locked").chmod(0)
    remove_tree(tree)
    assert not tree.exists() and (outside / "keep").read_text() == "keep"
    os.symlink(outside, tmp_path / "top-link")
    remove_tree(tmp_path / "top-link")
    assert not os.path.lexists(tmp_path / "top-link") and (outside / "keep").exists()


def test_tree_usage_counts_bytes_and_entries_without_following_links(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 10_000)
    os.symlink("/usr", tmp_path / "usr-link")
    used, entries = tree_usage(tmp_path, stop_after=100)
    assert entries == 4 and 20_000 <= used < 100_000


def feed(data: bytes, tmp_path, head=1000, tail=500):
    lines, seen = [], []
    log = BoundedLog(tmp_path / "log", lines.append, head_bytes=head, tail_bytes=tail)
    log.consume(io.BufferedReader(io.BytesIO(data)), seen.append)
    return (tmp_path / "log").read_text(), lines, seen


def test_bounded_log_keeps_head_and_tail_and_says_what_was_cut(tmp_path):
    data = b"".join(f"line {i}\n".encode() for i in range(10_000))
    text, live, seen = feed(data, tmp_path)
    assert text.startswith("line 0\nline 1\n") and text.endswith("line 9999\n")
    assert "[... output cut: about" in text and len(text) < 2000
    assert live == text.splitlines()  # the live log got exactly what the file holds
    assert seen[0] == "line 0" and len(seen) < 200  # only head lines are parsed one by one


def test_overlong_lines_and_control_characters_are_cut_and_cleaned(tmp_path):
    data = b"a" * (10 * MAX_LINE_CHARS) + b"\n" + b"\x1b[2J\x1b[31mred\x00\xff tab\tok\r\n"
    text, _, _ = feed(data, tmp_path, head=10**6)
    first, second = text.splitlines()
    assert first.startswith("a" * MAX_LINE_CHARS) and "line cut" in first and len(first) < MAX_LINE_CHARS + 60
    assert second == "red?\ufffd tab\tok"
    assert clean("\u2028x\x7f") == "?x?"


def test_bounded_log_memory_stays_small_for_a_huge_stream(tmp_path):
    read_fd, write_fd = os.pipe()

    def writer():
        with os.fdopen(write_fd, "wb") as w:
            for _ in range(64):
                w.write(b"q" * (4 * 2**20))  # 256 MiB in one line, then lines
            for _ in range(64):
                w.write(b"line\n" * 200_000)

    thread = threading.Thread(target=writer)
    thread.start()
    log = BoundedLog(tmp_path / "log", None, head_bytes=4096, tail_bytes=4096)
    with os.fdopen(read_fd, "rb") as pipe:
        log.consume(pipe, lambda line: None)
    thread.join()
    assert (tmp_path / "log").stat().st_size < 16_000


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: 12\n", 12),
        ("epochs: 3\nepochs: 7\n", 7),
        ("epochs: \u00b2\n", None),
        ("epochs: 99999999999999999999\n", None),
        ("epochs: -3\n", None),
        ("epochs: \uff11\n", None),  # a full-width digit: isdigit() is True, int() would accept it
        ("no epochs here\n", None),
    ],
)
def test_printed_epochs_are_parsed_strictly(text, expected):
    assert reported_epochs(text) == expected


def test_watchdog_deadline_is_the_same_whatever_the_candidate_prints():
    dog = Watchdog(
        launched=100.0,
        limits=Limits(
            budget_s=10,
            startup_allowance_s=5,
            export_allowance_s=2,
            memory_cap_bytes=10,
            disk_cap_bytes=10,
            max_files=3,
        ),
    )
    assert dog.deadline == 115.0 and dog.kill_at() == 117.0
    dog.saw_line("budget_start: 10.0", 112.0)  # a late marker buys nothing
    assert dog.kill_at() == 117.0
    assert dog.verdict(116.9, 5) is None and dog.verdict(117.0, 5) == "timeout"
    assert dog.verdict(101, 11) == "memory"
    assert dog.verdict(101, 5, disk_bytes=11) == "disk" and dog.verdict(101, 5, files=4) == "disk"
    assert dog.training_seconds(116.0) == 11.0  # from the end of the allowance: a late marker hides nothing


def test_a_flood_of_empty_lines_reaches_the_live_log_only_as_a_head(tmp_path):
    lines = []
    log = BoundedLog(tmp_path / "log", lines.append)
    log.consume(io.BufferedReader(io.BytesIO(b"\n" * 300_000)), lambda line: None)
    text = (tmp_path / "log").read_text()
    assert len(lines) < 6000 and "[... output cut:" in text


def test_a_sparse_file_is_refused_before_it_is_copied(tmp_path):
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(64 * 2**20)  # 64 MiB long, nothing allocated
    with pytest.raises(UnsafeFile, match="sparse file"):
        copy_out(tmp_path, "sparse", tmp_path / "copy", 2**30)
    assert not (tmp_path / "copy").exists()
    (tmp_path / "dense").write_bytes(os.urandom(3 * 2**20))
    copy_out(tmp_path, "dense", tmp_path / "copy", 2**30)
    assert (tmp_path / "copy").read_bytes() == (tmp_path / "dense").read_bytes()


def test_a_wrong_output_shape_is_reported_without_its_sizes():
    """An output shape can depend on the pixels (aten.nonzero): its sizes would carry them to the proposer."""
    images = torch.randint(1, 256, (prepare.EVAL_BATCH_SIZE, 28, 28), dtype=torch.uint8)
    pixels = int(images.count_nonzero())  # what the model below would show as its output's length
    with pytest.raises(prepare.ArtifactError) as error:
        prepare.predict(lambda batch: batch.flatten(1).nonzero(), images)
    assert str(pixels) not in str(error.value) and "not one row of logits per image" in str(error.value)
    columns = prepare.NUM_CLASSES + int(images[0, 0, 0])  # computed from a pixel, never the right count
    reason = score_logits(np.zeros((100, columns), dtype=np.float32), torch.zeros(100, dtype=torch.long)).reason
    assert reason == "wrong output shape: expected (100, 10) (images, classes)"
