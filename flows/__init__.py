"""The top layer: Prefect flows, the CLI, recipes, reports. The only layer that imports Prefect."""

import os

# Read by Prefect when it is imported, so set before any flows module imports it: the ephemeral server
# takes 11–24 s to start on a small machine (give it time), and no analytics.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows import plugins  # noqa: E402,F401  (registers implementations in curation's registries)
