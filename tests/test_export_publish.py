"""Publishing an export: one export per --out at a time (issue 20 item 3), the new tree swapped
in in one atomic step and a killed export's leftovers removed by the next (item 10)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from export import pipeline
from export.config import ExportConfig
from runtime.errors import RoiedgeError
from runtime.manifest import MANIFEST_NAME
from runtime.replace import lock_path

ROOT = Path(__file__).resolve().parent.parent


class Killed(BaseException):
    """Stands for kill -9: nothing of the export after this point runs (no cleanup either)."""


def _tree(path: Path, label: str) -> Path:
    path.mkdir(parents=True)
    (path / MANIFEST_NAME).write_text(label)
    (path / "model.tflite").write_text(label)
    return path


def _label(out: Path) -> str:
    return (out / MANIFEST_NAME).read_text()


@contextlib.contextmanager
def _held(out: Path):
    """Hold the lock of ``out`` as a running export holds it."""
    with open(lock_path(out), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def test_a_second_export_to_the_same_out_is_refused_in_one_line_exit_2(tmp_path):
    out = _tree(tmp_path / "artifacts", "old")
    with _held(out):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(
            [sys.executable, "-m", "export", "--out", str(out), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"--out {out}: another export is writing it" in lines[0]
        # The API refuses alike, and the held --out is untouched.
        with pytest.raises(RoiedgeError, match="another export is writing it"):
            pipeline.run_export(ExportConfig(out=out, progress=False))
    assert _label(out) == "old" and sorted(p.name for p in out.iterdir()) == [
        MANIFEST_NAME,
        "model.tflite",
    ]
    # Free again: the claim succeeds.
    with pipeline.claimed_out(out):
        pass


def test_exports_to_other_outs_in_one_folder_do_not_block_each_other(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    with (
        pipeline.claimed_out(first),
        pipeline.claimed_out(second),
        pytest.raises(RoiedgeError, match=r"--out .*a: another export"),
        pipeline.claimed_out(first),
    ):
        pass


def _killed(*args, **kwargs):
    raise Killed


def _publish_killed(tmp_path, monkeypatch, where: str, exchange: bool) -> Path:
    """Swap a "new" tree in for an "old" --out, killed at ``where``; returns --out.

    The build folder is made by hand, not by ``pipeline.building_dir``: kill -9 runs none of
    its cleanup.
    """
    out = _tree(tmp_path / "artifacts", "old")
    with pipeline.claimed_out(out), monkeypatch.context() as patch:
        work = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".artifacts.building-"))
        work.rmdir()
        _tree(work, "new")
        if not exchange:
            patch.setattr(pipeline, "exchange_paths", lambda first, second: False)
        if where == "before swap":
            patch.setattr(pipeline, "exchange_paths", _killed)
        elif where == "after swap":  # swapped, the old tree not yet removed
            patch.setattr(pipeline.shutil, "rmtree", _killed)
        elif where == "between renames":
            real_replace, renames = os.replace, []

            def replace(source, target):
                renames.append(target)
                if len(renames) == 2:
                    raise Killed
                real_replace(source, target)

            patch.setattr(pipeline.os, "replace", replace)
        with pytest.raises(Killed):
            pipeline.swap_in(work, out)
    return out


@pytest.mark.parametrize("where", ["before swap", "after swap"])
def test_a_killed_publish_never_leaves_out_missing_and_the_next_export_cleans_up(
    tmp_path, monkeypatch, where
):
    out = _publish_killed(tmp_path, monkeypatch, where, exchange=True)
    # At every instant --out is a whole tree, old before the swap, new after it.
    assert _label(out) == ("old" if where == "before swap" else "new")
    assert [p for p in tmp_path.iterdir() if ".building-" in p.name]  # a killed export's leftover
    (tmp_path / ".other.building-x").mkdir()  # another --out's: not ours to remove
    with pipeline.claimed_out(out):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.building-x", "artifacts"]
    assert _label(out) == ("old" if where == "before swap" else "new")


def test_without_an_exchange_a_publish_killed_between_renames_is_restored(tmp_path, monkeypatch):
    out = _publish_killed(tmp_path, monkeypatch, "between renames", exchange=False)
    assert not out.exists()  # the window the two-rename fallback has
    with pipeline.claimed_out(out):
        assert _label(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]


def test_swap_in_exchanges_and_removes_the_old_tree(tmp_path):
    out = _tree(tmp_path / "artifacts", "old")
    built = _tree(tmp_path / ".artifacts.building-1", "new")
    pipeline.swap_in(built, out)
    assert _label(out) == "new" and not built.exists()
    fresh = tmp_path / "fresh"
    pipeline.swap_in(_tree(tmp_path / ".fresh.building-1", "new"), fresh)
    assert _label(fresh) == "new"


def test_the_lock_file_goes_with_its_holder_and_a_leftover_one_does_not_block(tmp_path):
    out = tmp_path / "artifacts"
    lock_path(out).write_text("")  # left by a kill -9: the kernel dropped its lock with the holder
    with pipeline.claimed_out(out):
        assert lock_path(out).is_file()
    assert not lock_path(out).exists()


def test_a_waiting_writer_locks_the_file_now_at_the_path_not_the_removed_one(tmp_path):
    import threading

    from runtime.replace import output_lock

    out = tmp_path / "artifacts"
    order: list[str] = []
    first_holds = threading.Event()
    release_first = threading.Event()

    def first() -> None:
        with output_lock(out, "--out", "export"):
            first_holds.set()
            release_first.wait(10)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait(10)
    release_first.set()
    # Waits for the first holder, whose file is then unlinked: the second must not trust the
    # inode it opened before that (two holders at once otherwise), and lock the file at the path.
    with output_lock(out, "--out", "export", wait=True):
        order.append("second holds")
        # What the second holds is the file at the path: a third writer is refused.
        with (
            pytest.raises(RoiedgeError, match="another export is writing it"),
            output_lock(out, "--out", "export"),
        ):
            pass
    thread.join(10)
    assert order == ["first done", "second holds"]
    assert not lock_path(out).exists()
