"""``agentbox doctor --browser``: Chromium and its driver, reported missing and (with --fix) installed by apt."""

from __future__ import annotations

import pytest

from agentbox import doctor


def test_missing_browser_is_reported_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None if name == "chromedriver" else f"/usr/bin/{name}")
    check = doctor.ensure_browser(fix=False, progress=lambda _m: None)
    assert not check.ok and "chromedriver" in check.detail and check.fix == "agentbox doctor --fix --browser"


def test_fix_installs_debians_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[str] = []
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}" if installed else None)
    monkeypatch.setattr(doctor, "_apt_install", lambda packages, progress: installed.extend(packages))
    check = doctor.ensure_browser(fix=True, progress=lambda _m: None)
    assert check.ok and installed == ["chromium", "chromium-driver"]


def test_present_browser_is_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(doctor, "_apt_install", lambda packages, progress: pytest.fail("nothing to install"))
    assert doctor.ensure_browser(fix=True, progress=lambda _m: None).ok
