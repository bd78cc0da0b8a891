"""Write the README's settings table and .env.production.template from the settings' declarations.

    python -m devtools.settings_docs          # rewrite both
    python -m devtools.settings_docs --check  # exit 1 if either is out of date

Both are derived from apps/api/app/config.py (type, rule, default, meaning), so a setting
is documented where it is declared; tests/test_settings_docs.py fails when they drift.
"""

from __future__ import annotations

import argparse
import sys

from dotenv import dotenv_values

from apps.api.app.config import PROJECT_ROOT, setting_docs

README = PROJECT_ROOT / "README.md"
TEMPLATE = PROJECT_ROOT / ".env.production.template"
TABLE_START = "<!-- settings table: generated from apps/api/app/config.py by python -m devtools.settings_docs -->"
TABLE_END = "<!-- end of the settings table -->"
# The environments whose .env file the table shows, beside the defaults.
TABLE_ENVS = ("dev", "preprod")

TEMPLATE_HEADER = """\
# Rentals API: every setting, with its range and its default. This file is never loaded.
# Generated from apps/api/app/config.py by `python -m devtools.settings_docs`; edit the
# declarations there, not this file.
# Copy it to .env.production (APP_ENV=production loads that file) or set the variables in
# the real environment, which always wins over the file. Defaults are what applies when a
# variable is unset; production refuses to start without the three secrets.
"""


def _env_file(env: str) -> dict[str, str]:
    path = PROJECT_ROOT / f".env.{env}"
    return {key: value for key, value in dotenv_values(path).items() if value is not None} if path.is_file() else {}


def readme_table() -> str:
    """Return the README's settings table, markers included."""
    files = {env: _env_file(env) for env in TABLE_ENVS}
    lines = [
        TABLE_START,
        f"| Variable | Default | Allowed | {' | '.join(TABLE_ENVS)} | Meaning |",
        "|---|---|---|" + "---|" * len(TABLE_ENVS) + "---|",
    ]
    for doc in setting_docs():
        in_files = " | ".join(_cell(files[env].get(doc.name)) for env in TABLE_ENVS)
        lines.append(f"| `{doc.name}` | {doc.default} | {doc.allowed} | {in_files} | {doc.meaning} |")
    lines.append(TABLE_END)
    return "\n".join(lines) + "\n"


def _cell(value: str | None) -> str:
    if value is None:
        return ""
    return f"`{value}`" if value else "empty"


def _unmarked(markdown: str) -> str:
    return markdown.replace("`", "").replace("\\|", "|")


def production_template() -> str:
    """Return .env.production.template: every setting under its section, with its range and default."""
    parts = [TEMPLATE_HEADER]
    section = None
    for doc in setting_docs():
        if doc.section != section:
            section = doc.section
            parts.append(f"\n# --- {section} " + "-" * max(3, 86 - len(section)) + "\n")
        meaning = _unmarked(doc.meaning)
        parts.append(
            f"# {meaning[0].upper()}{meaning[1:]}. {_unmarked(doc.allowed)}. Default: {_unmarked(doc.default)}.\n"
        )
        parts.append(f"{doc.name}={doc.production}\n")
    return "".join(parts)


def readme_with_table(readme: str) -> str:
    """Return the README text with its settings table replaced by the generated one."""
    start = readme.index(TABLE_START)
    end = readme.index(TABLE_END) + len(TABLE_END) + 1
    return readme[:start] + readme_table() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, compare) the README table and the production template."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is out of date; change nothing")
    args = parser.parse_args(argv)
    wanted = {README: readme_with_table(README.read_text()), TEMPLATE: production_template()}
    stale = [path for path, text in wanted.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.name} is out of date; run: python -m devtools.settings_docs", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
