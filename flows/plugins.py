"""Where the top layer plugs implementations from ``training`` and ``evals`` into ``curation``'s registries.

``curation`` never imports a higher layer; a stage that needs a model-backed scorer or the items of
an eval suite asks :mod:`curation.registry` by name, and this module registers the targets (as
``"module:attribute"`` strings, so nothing heavy is imported here). It is imported with the
``flows`` package, so the CLI, the Python API and the Prefect flows all see the same entries.

Add one line per implementation::

    SCORERS.register("ifd", "training.ifd:IFDScorer")
    SERVICES.register("benchmark_documents", "evals.benchmarks:documents")
"""

from __future__ import annotations

from curation.registry import SCORERS, SERVICES  # noqa: F401  (used by the registration lines)

# the benchmark items of an eval suite, for the decontamination stage (curation.decontam)
SERVICES.register("benchmark_documents", "evals.benchmarks:benchmark_documents")

# instruction-following difficulty from the base model (score: {ifd: {model: ...}})
SCORERS.register("ifd", "training.ifd:IFDScorer")
