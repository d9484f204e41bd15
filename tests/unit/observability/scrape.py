"""What a Prometheus scrape says about one label value: {(sample name, labels): value}."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str, label: str, value: str) -> Samples:
    """The samples of `text` (the exposition format) whose `label` is `value`, `_created` aside."""
    return {
        (sample.name, frozenset(sample.labels.items())): round(sample.value, 9)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get(label) == value and not sample.name.endswith("_created")
    }
