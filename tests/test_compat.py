"""Where the app reaches into a library's internals, an upgrade that breaks them fails here first."""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata

import pytest
from packaging.specifiers import SpecifierSet

from apps.api.app import compat

MODULES = sorted(info.name for info in pkgutil.iter_modules(compat.__path__))


def test_every_library_the_app_reaches_into_has_its_module():
    assert MODULES == ["flask_openapi3", "granian", "gunicorn", "prometheus_client", "psycopg2_pool"]


@pytest.mark.parametrize("name", MODULES)
def test_installed_release_is_one_the_module_was_checked_against(name):
    module = importlib.import_module(f"{compat.__name__}.{name}")
    installed = metadata.version(module.DISTRIBUTION)
    assert installed in SpecifierSet(module.CHECKED), (
        f"{module.DISTRIBUTION} {installed} is outside {module.CHECKED}, which apps/api/app/compat/{name}.py was "
        "checked against: read what it relies on, run its verify(), then widen CHECKED"
    )


@pytest.mark.parametrize("name", MODULES)
def test_internals_the_module_relies_on_are_still_there(name):
    importlib.import_module(f"{compat.__name__}.{name}").verify()


def test_a_missing_internal_is_reported_with_the_library_and_its_release():
    with pytest.raises(compat.IncompatibleVersion, match=r"^psycopg2-binary 2\.9\.\d+ no longer has a test internal;"):
        compat.require(False, "psycopg2-binary", "a test internal")


def test_a_changed_view_factory_in_flask_openapi3_fails_verify(monkeypatch):
    import flask_openapi3

    from apps.api.app.compat import flask_openapi3 as module

    def create_view_func(func, header, cookie, path, query, form, body, raw, view_class=None, new_option=None):
        """Stand in for a release whose view factory takes other arguments."""

    monkeypatch.setattr(flask_openapi3.APIBlueprint, "create_view_func", staticmethod(create_view_func))
    with pytest.raises(compat.IncompatibleVersion, match="create_view_func"):
        module.verify()
