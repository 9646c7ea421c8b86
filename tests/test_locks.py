"""One writer per folder (vesselseg.locks): refused second holders, stale locks, release."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from vesselseg.errors import VesselsegError
from vesselseg.locks import LOCK_NAME, FolderBusyError, hold_folder, lock_holder

#: Holds a folder's lock in another process until its stdin closes.
HOLDER = """
import sys
from vesselseg.locks import hold_folder

with hold_folder(sys.argv[1], command=sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def other_process_holds():
    """Start a process holding a folder's lock; yields a function (folder, command) -> pid."""
    started = []

    def hold(folder, command="train"):
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), command],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process.pid

    yield hold
    for process in started:
        process.stdin.close()
        process.wait(timeout=30)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_holder_is_refused_with_the_holders_name(tmp_path, other_process_holds):
    pid = other_process_holds(tmp_path, "preprocess")
    holder = lock_holder(tmp_path)
    assert holder["pid"] == pid and holder["command"] == "preprocess"
    with pytest.raises(FolderBusyError) as refused:
        with hold_folder(tmp_path, command="train"):
            pytest.fail("two holders")
    message = str(refused.value)
    assert f"vesselseg preprocess (pid {pid} on {socket.gethostname()}) since " in message
    assert holder["started"] in message and str(tmp_path) in message
    assert isinstance(refused.value, VesselsegError)
    assert lock_holder(tmp_path)["pid"] == pid  # the holder's lock is untouched


def test_the_same_process_cannot_hold_a_folder_twice(tmp_path):
    with hold_folder(tmp_path, command="eval"):
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):
            with hold_folder(tmp_path, command="eval"):
                pass
        assert lock_holder(tmp_path)["pid"] == os.getpid()
    assert lock_holder(tmp_path) is None


def test_the_lock_is_released_after_an_exception_and_ctrl_c(tmp_path):
    for stop in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with hold_folder(tmp_path, command="test"):
                assert (tmp_path / LOCK_NAME).exists()
                raise stop
        assert not (tmp_path / LOCK_NAME).exists()


def test_a_folder_made_for_the_lock_goes_again_when_left_empty(tmp_path):
    with hold_folder(tmp_path / "empty", command="eval"):
        pass
    assert not (tmp_path / "empty").exists()
    with hold_folder(tmp_path / "used", command="eval"):
        (tmp_path / "used" / "result.txt").write_text("kept")
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["result.txt"]


def _write_lock(folder, **fields):
    record = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "train",
              "started": "2024-01-01T00:00:00+00:00", "token": "old", **fields}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return record


@pytest.mark.parametrize("left_by", ["dead-pid", "our-pid-before-a-restart", "reused-pid"])
def test_a_stale_lock_is_taken_over_with_a_note(left_by, tmp_path, capsys):
    fields = {"dead-pid": {}, "our-pid-before-a-restart": {"pid": os.getpid()},
              # our parent runs, but started long after this lock was taken
              "reused-pid": {"pid": os.getppid(), "started": "2000-01-01T00:00:00+00:00"}}
    _write_lock(tmp_path, **fields[left_by])
    with hold_folder(tmp_path, command="train"):
        assert lock_holder(tmp_path)["pid"] == os.getpid()
    assert "taking over the lock of vesselseg train" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no lock, no leftovers


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    _write_lock(tmp_path, host="elsewhere", pid=12345)
    with pytest.raises(FolderBusyError, match=f"on elsewhere.*delete {tmp_path / LOCK_NAME}"):
        with hold_folder(tmp_path, command="train"):
            pass
    assert lock_holder(tmp_path)["host"] == "elsewhere"


def test_a_second_train_on_the_same_unfinished_run_refuses(synthetic_preprocessed, tmp_path,
                                                           other_process_holds, capsys):
    """A second copy of a running `train` command finds the same unfinished run: it refuses,
    naming the first, instead of both training into the folder."""
    from vesselseg.preprocess import load_preprocess_config
    from vesselseg.runs import RunFolder, config_fingerprint
    from vesselseg.train import build_parser, config_from_args, main

    argv = ["--data", str(synthetic_preprocessed), "--runs-dir", str(tmp_path), "--epochs", "2",
            "--base-filters", "4", "--depth", "2", "--quiet"]
    config = config_from_args(build_parser().parse_args(argv))
    config = replace(config, preprocess=load_preprocess_config(synthetic_preprocessed))
    run = RunFolder.create(config)  # as the first process made it
    run.save_config(config)
    run.update_status(state="running", fingerprint=config_fingerprint(config))
    pid = other_process_holds(run.path, "train")
    before = sorted(p.name for p in run.path.iterdir())
    capsys.readouterr()
    assert main(argv) != 0
    error = capsys.readouterr().err
    assert f"{run.path}: in use by vesselseg train (pid {pid} on" in error
    assert sorted(p.name for p in run.path.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == [run.path.name]  # no second run either
    assert run.state == "running"
