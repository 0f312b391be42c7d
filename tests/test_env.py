"""What a run records of where it ran: the commit (dirty with any change that alters
what runs) and a device name that tells two CPUs apart."""

import subprocess
from pathlib import Path

import pytest

from suite import env


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_a_new_module_in_a_package_makes_the_commit_dirty(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "zoo.py").write_text("")
    (tmp_path / "notes.txt").write_text("")  # untracked outside the packages: not code that runs
    _git(tmp_path, "add", "baselines")
    _git(tmp_path, "commit", "-q", "-m", "x")
    monkeypatch.setattr(env, "REPO", tmp_path)
    clean = env.git_commit.__wrapped__()
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "baselines" / "my_presets.py").write_text("")  # the registry would import it
    assert env.git_commit.__wrapped__() == clean + "+dirty"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
def test_the_cpu_device_name_is_the_cpu_model():
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    if not models:
        pytest.skip("this /proc/cpuinfo names no model")
    assert env.device_name("cpu") == models[0] and env.device_name("cpu") not in ("x86_64", "aarch64")
