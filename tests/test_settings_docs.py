"""The operator docs name every setting the code reads."""

import re
from pathlib import Path

import pytest

from apps.api.app.config import _DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = sorted({*_DEFAULTS, "APP_ENV"})


@pytest.mark.parametrize("name", SETTINGS)
def test_production_template_documents_every_setting(name):
    template = (ROOT / ".env.production.template").read_text()
    assert re.search(rf"^{name}=", template, re.MULTILINE), f"{name} is missing from .env.production.template"


@pytest.mark.parametrize("name", SETTINGS)
def test_readme_table_lists_every_setting(name):
    assert f"| `{name}` |" in (ROOT / "README.md").read_text()


def test_template_names_only_real_settings():
    template = (ROOT / ".env.production.template").read_text()
    names = set(re.findall(r"^([A-Z_]+)=", template, re.MULTILINE))
    assert names <= set(SETTINGS)
