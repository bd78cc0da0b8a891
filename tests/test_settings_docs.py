"""The operator docs name every setting the code reads, as its declaration describes it."""

import re
from pathlib import Path

import pytest

from apps.api.app.config import SETTING_NAMES
from devtools import settings_docs

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = sorted(SETTING_NAMES)


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


def test_readme_table_and_template_are_generated_from_the_declarations():
    assert settings_docs.main(["--check"]) == 0, "run: python -m devtools.settings_docs"
