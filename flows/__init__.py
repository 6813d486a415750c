"""The top layer: Prefect flows, the CLI, recipes, reports. The only layer that imports Prefect."""

from flows import plugins  # noqa: F401  (registers implementations in curation's registries)
