"""The walls of ../shared/ARCHITECTURE.md, checked on the source: adapters reach the core only
through ``bot``'s public modules, never storage or a backend; the core never imports a platform SDK."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)


def _imports(folder: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found.extend((str(path.relative_to(ROOT)), alias.name) for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_adapters_reach_neither_storage_nor_backends() -> None:
    crossing = [
        (path, module)
        for path, module in _imports("adapters")
        if _within(module, "storage") or _within(module, "bot.backends") or _within(module, "bot.gpu")
    ]
    assert crossing == []


def test_the_job_entity_and_its_states_come_from_bot() -> None:
    import bot
    from storage.tables import Job, JobState

    assert bot.Job is Job and bot.JobState is JobState
    assert {"Job", "JobState"} <= set(bot.__all__)


def test_the_core_imports_no_platform_sdk() -> None:
    sdks = ("slack_bolt", "slack_sdk", "discord")
    crossing = [(p, m) for folder in ("bot", "storage") for p, m in _imports(folder) if any(_within(m, s) for s in sdks)]
    assert crossing == []
