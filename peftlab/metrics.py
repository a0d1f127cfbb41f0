"""Task metrics through the `evaluate` API, computed locally.

`evaluate.load("accuracy")` downloads its metric script from the Hub and fails offline, so peftlab
defines the metrics it needs as `evaluate.Metric` subclasses backed by scikit-learn / scipy: same API
(`compute`, `add_batch`), no network, identical numbers online and offline.
"""

from __future__ import annotations

import datasets
import evaluate


def _features(value_type: str) -> datasets.Features:
    return datasets.Features({"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)})


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="Fraction of exact label matches.", citation="",
                                   inputs_description="integer class ids", features=_features("int64"))

    def _compute(self, predictions, references):
        from sklearn.metrics import accuracy_score

        return {"accuracy": float(accuracy_score(references, predictions))}


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="Unweighted mean of per-class F1.", citation="",
                                   inputs_description="integer class ids", features=_features("int64"))

    def _compute(self, predictions, references):
        from sklearn.metrics import f1_score

        return {"macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))}
