"""The install paths: the test extra stays light (no torch, no CUDA), and CI's rule that only
CUDA tests may be skipped."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "nvidia-", "triton", "diffusers", "transformers", "accelerate")


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.timeout(10)
def test_the_test_extra_names_no_gpu_package() -> None:
    test = [requirement.lower() for requirement in _extras()["test"]]
    assert not [r for r in test if r.startswith(HEAVY) or "[gpu" in r]
    assert {"hypothesis", "trustme", "pytest-timeout"} <= {r.split(">")[0].split("=")[0] for r in test}
    assert any(r.startswith("torch") for r in _extras()["gpu"])


@pytest.mark.timeout(30)
def test_one_ffmpeg_the_one_in_pyavs_wheel_and_no_imageio_ffmpeg() -> None:
    """PyAV's wheel already holds FFmpeg with libx264 and AAC; a second copy (imageio-ffmpeg's
    binary) would only grow the image, so nothing may list or import one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [r for r in project["dependencies"] + sum(project["optional-dependencies"].values(), []) if "imageio" in r]
    assert listed == []
    offenders: list[str] = []
    for folder in ("bot", "adapters", "storage", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                if any(name.split(".")[0] == "imageio_ffmpeg" for name in names):
                    offenders.append(str(path.relative_to(ROOT)))
    docker = [p for p in (ROOT / "docker").iterdir() if p.is_file() and "imageio" in p.read_text(errors="replace")]
    assert offenders == [] and docker == []
    assert {"libx264", "aac"} <= av.codecs_available, "PyAV's FFmpeg must encode h264 and AAC itself"


@pytest.mark.timeout(300)
def test_the_test_extra_resolves_without_torch(tmp_path: Path) -> None:
    """What `pip install -e ".[test]"` would install on a clean machine, as pip resolves it."""
    report = tmp_path / "report.json"
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", *isolation,
         "--report", str(report), f"{ROOT}[test]"],
        check=True, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"videobot", "pytest", "hypothesis", "trustme", "pydantic-settings"} <= names
    assert not [n for n in names if n.startswith(HEAVY)], sorted(names)


SAMPLE = '''
import pytest

def test_runs():
    pass

@pytest.mark.skip(reason="forgot to install something")
def test_skipped():
    pass

@pytest.mark.cuda
@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_on_cuda():
    pass
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forbid", [True, False], ids=["ci", "developer"])
def test_ci_fails_on_a_skip_unless_the_test_is_cuda_only(tmp_path: Path, forbid: bool) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "VIDEOBOT_FORBID_SKIPS"}
    if forbid:
        env["VIDEOBOT_FORBID_SKIPS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), "-o", "markers=cuda: CUDA", "test_sample.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert "1 passed, 2 skipped" in result.stdout
    if forbid:
        assert result.returncode == 1, result.stdout
        assert "test_sample.py::test_skipped: forgot to install something" in result.stdout
        assert "test_on_cuda" not in result.stdout.split("only CUDA tests may be skipped")[1]
    else:
        assert result.returncode == 0, result.stdout
