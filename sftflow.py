"""``import sftflow``: the notebook API (:mod:`flows.api`) under the project's name.

    kept, ledger = sftflow.stage("dedup", df, threshold=0.7)
    kept, ledger = sftflow.curate(df, "configs/demo.yaml")
"""

from flows.api import Curated, curate, stage, stages

__all__ = ["Curated", "curate", "stage", "stages"]
