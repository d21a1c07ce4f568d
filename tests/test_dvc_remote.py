"""The project's DVC remote: a default local folder outside the work tree, and a round trip
(push, lose the cache and the outputs, pull) that leaves `dvc status` clean."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import VENV_BIN, copy_repo, write_tiny_params


def _dvc(project: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=project, capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_default_remote_is_a_folder_outside_the_work_tree(repo_root):
    listed = _dvc(repo_root, "remote", "list").split()
    name, url = listed[0], Path(listed[1])
    assert listed[2:] == ["(default)"] and name == "local"
    assert url.is_absolute() and not url.is_relative_to(repo_root)
    assert url == repo_root.parent / "hits-occlusion-dvc-remote"


@pytest.mark.slow
def test_push_then_pull_restores_the_outputs_and_status_is_clean(repo_root, tmp_path,
                                                                venv_env):
    project = tmp_path / "project"
    copy_repo(repo_root, project)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    write_tiny_params(repo_root, project)
    (project / "data" / "raw").mkdir(parents=True, exist_ok=True)
    remote = tmp_path / "remote"  # not the shared default: this test's own folder
    _dvc(project, "remote", "modify", "--local", "local", "url", str(remote))
    _dvc(project, "repro", "prepare", env=venv_env)
    prepared = project / "data" / "prepared"
    before = _digests(prepared)
    assert "train.npz" in before

    _dvc(project, "push", "prepare")
    assert any(remote.rglob("*"))
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(prepared)
    _dvc(project, "pull", "prepare")
    assert _digests(prepared) == before
    assert "up to date" in _dvc(project, "status", "prepare")
