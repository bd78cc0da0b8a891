"""Print, as JSON, which routes and CLI commands the Rentals API has right now.

    python -m bench.probe   (with the API's env vars set)

The harness runs this in a subprocess to decide which endpoints it can measure and
whether the project's seed and users commands exist yet.
"""

from __future__ import annotations

import json
import sys

import click


def describe() -> dict:
    """Return {"routes": [[rule, method], ...], "cli": {group: {command: [option names]}}}."""
    from apps.api.app import create_app

    app = create_app()
    routes = sorted(
        {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}}
    )
    cli: dict[str, dict[str, list[str]]] = {}
    for name, group in app.cli.commands.items():
        if isinstance(group, click.Group):
            cli[name] = {
                command_name: [opt for param in command.params for opt in getattr(param, "opts", [])]
                for command_name, command in group.commands.items()
            }
    return {"routes": [list(route) for route in routes], "cli": cli}


if __name__ == "__main__":
    json.dump(describe(), sys.stdout)
