"""No file trainwright writes is written through a symbolic link (issue 19, item 5): a link where trainwright
keeps a file of its own (the run dir's files, checkpoints, plots) is replaced or removed, never followed; a
link at a path the user names (--output, --out) is refused; a link at a name an older trainwright used for
its temporary files is left as it is (issue 26: temporaries have random names). What a link points to, a
user's file or nothing, is left as it was. (The lock file: tests/test_lock.py.)"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from reliability_helpers import HEART, TINY, call, snapshot, train_ok, user_error
from trainwright.errors import UserError
from trainwright.run.files import atomic_open, atomic_path, is_temporary, write_json, write_json_atomic

# Files of a run dir that a resumed run writes again.
REWRITTEN = ["summary.json", "metrics.jsonl", "recipe.yaml", "data.json", "model.safetensors",
             "checkpoints/latest.json"]
# ... and those it only reads.
KEPT = [".trainwright"]


def _link_to_copy(path: Path, users: Path) -> None:
    """Make `path` a link to a user's copy of it, and `path`.tmp (an older trainwright's temporary name) a link
    to another user's file."""
    copy = users / path.name
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    (users / f"{path.name}.tmp").write_text("the user's own file\n")
    path.with_name(path.name + ".tmp").symlink_to(users / f"{path.name}.tmp")


@pytest.fixture
def finished(capsys, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", run_dir)
    return run_dir


def test_links_in_a_run_dir_are_replaced_and_what_they_point_to_is_untouched(capsys, tmp_path, finished):
    users = tmp_path / "users"
    users.mkdir()
    for name in REWRITTEN + KEPT:
        _link_to_copy(finished / name, users)
    (users / "folder").mkdir()
    (users / "folder" / "keep.txt").write_text("keep\n")
    (finished / "checkpoints" / ".tmp-step_00000010").symlink_to(users / "folder")  # where the next save goes
    (finished / "checkpoints" / "step_00000010").symlink_to(users / "folder")  # and the name it then gets
    before = snapshot(users)
    out, _ = train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)  # resumes, rewrites them
    assert "Run complete at step 10" in out
    assert snapshot(users) == before
    for name in REWRITTEN:
        path = finished / name
        assert path.is_file() and not path.is_symlink(), name
        assert os.path.islink(f"{path}.tmp"), name  # not trainwright's: left as it is
        assert not [p.name for p in path.parent.iterdir() if is_temporary(p.name)], name
    assert (finished / "checkpoints" / "step_00000010" / "manifest.json").is_file()
    assert not (finished / "checkpoints" / "step_00000010").is_symlink()
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["latest.json", "latest.json.tmp",
                                                                            "step_00000005", "step_00000010"]
    assert call(capsys, "eval", finished)[0] == 0


def test_dangling_links_in_a_run_dir_make_no_file_where_they_point(capsys, tmp_path, finished):
    nowhere = tmp_path / "nowhere"
    for name in ["metrics.jsonl", "summary.json.tmp", "model.safetensors.tmp", "checkpoints/latest.json.tmp"]:
        (finished / name).unlink(missing_ok=True)
        (finished / name).symlink_to(nowhere / name.replace("/", "_"))
    nowhere.mkdir()
    train_ok(capsys, HEART, *TINY, "trainer.epochs=2", "--run-dir", finished)
    assert list(nowhere.iterdir()) == []
    assert not (finished / "metrics.jsonl").is_symlink()
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    assert lines and all('"step": ' in line for line in lines)  # the resumed run's records, in a file of its own


def test_plots_replace_links_and_never_write_through_them(capsys, tmp_path, finished):
    users = tmp_path / "users"
    users.mkdir()
    (finished / "plots").mkdir()
    for name in ("loss_curves.png", "predictions.png"):
        (users / name).write_text("the user's picture\n")
        (finished / "plots" / name).symlink_to(users / name)
        (users / f"{name}.tmp").write_text("the user's other picture\n")
        (finished / "plots" / f"{name}.tmp").symlink_to(users / f"{name}.tmp")
    before = snapshot(users)
    code, _, err = call(capsys, "plot", finished)
    assert code == 0, err
    assert snapshot(users) == before
    for name in ("loss_curves.png", "predictions.png"):
        assert not (finished / "plots" / name).is_symlink()
        assert (finished / "plots" / name).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("target", ["a file", "nothing"])
def test_predict_and_export_refuse_an_output_that_is_a_link(capsys, tmp_path, finished, target):
    users = tmp_path / "users_file"
    if target == "a file":
        users.write_text("precious\n")
    points = tmp_path / "points.csv"
    points.write_text("x,y\n0.5,0.5\n")
    for command, option, name in (("predict", "--output", "out.csv"), ("export", "--out", "out.safetensors")):
        link = tmp_path / name
        link.symlink_to(users)
        source = [finished, "--input", points] if command == "predict" else [finished]
        user_error(capsys, command, *source, option, link, fragments=(option, str(link), "symbolic link"))
        assert link.is_symlink()
        assert users.read_text() == "precious\n" if target == "a file" else not users.exists()


def test_predict_and_export_never_write_through_a_link_at_their_temporary_file(capsys, tmp_path, finished):
    points = tmp_path / "points.csv"
    points.write_text("x,y\n0.5,0.5\n")
    users = tmp_path / "users"
    users.mkdir()
    for command, option, name in (("predict", "--output", "out.csv"), ("export", "--out", "out.safetensors")):
        (users / name).write_text("precious\n")
        (tmp_path / f"{name}.tmp").symlink_to(users / name)
        source = [finished, "--input", points] if command == "predict" else [finished]
        code, _, err = call(capsys, command, *source, option, tmp_path / name)
        assert code == 0, err
        assert (users / name).read_text() == "precious\n"
        assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink()
        assert (tmp_path / f"{name}.tmp").readlink() == users / name  # the user's link: left as it is


# --- files.py, the one way trainwright writes files ------------------------------------------------------


def _user_files(tmp_path: Path) -> tuple[Path, Path]:
    users = tmp_path / "users"
    users.mkdir()
    (users / "a.txt").write_text("precious a\n")
    (users / "b.txt").write_text("precious b\n")
    return users / "a.txt", users / "b.txt"


@pytest.mark.parametrize("write", ["json", "text", "library"])
def test_an_atomic_write_replaces_a_link_and_leaves_one_at_the_old_temporary_name(tmp_path, write):
    a, b = _user_files(tmp_path)
    target = tmp_path / "file"
    target.symlink_to(a)
    target.with_name("file.tmp").symlink_to(b)
    if write == "json":
        write_json_atomic(target, {"x": 1})
    elif write == "text":
        with atomic_open(target) as file:
            file.write("x\n")
    else:
        with atomic_path(target) as tmp, open(tmp, "w") as file:  # a library given the path opens it itself
            file.write("x\n")
    assert a.read_text() == "precious a\n" and b.read_text() == "precious b\n"
    assert not target.is_symlink() and (tmp_path / "file.tmp").readlink() == b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "file.tmp", "users"]


def test_new_files_and_appended_files_refuse_links(tmp_path):
    from trainwright.run.files import open_append

    a, _ = _user_files(tmp_path)
    for name, target in (("to_a", a), ("dangling", tmp_path / "nothing")):
        link = tmp_path / name
        link.symlink_to(target)
        with pytest.raises(FileExistsError):
            write_json(link, {"x": 1})  # checkpoint internals: new files in a new folder
        with pytest.raises(UserError, match=f"{link} is a symbolic link"):
            open_append(link)  # metrics.jsonl, samples, study logs
    assert a.read_text() == "precious a\n" and not (tmp_path / "nothing").exists()


def test_an_atomic_write_that_fails_names_its_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(OSError) as full:
        with atomic_open(target) as file:
            file.write("x\n")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert full.value.filename == str(target)
    with pytest.raises(PermissionError) as denied:
        with atomic_path(target) as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert denied.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
