"""docs/operating.md documents every service setting by its environment variable."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

OPERATING = Path(__file__).resolve().parents[1] / "docs/operating.md"


def test_every_service_setting_is_documented_in_the_operating_guide():
    text = OPERATING.read_text()
    missing = [
        name
        for name in Settings.model_fields
        if name != "sandbox" and f"`OPSD_{name.upper()}`" not in text
    ]
    assert missing == [], f"docs/operating.md does not document {missing}"
