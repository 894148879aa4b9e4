"""The model card's YAML front matter, on the Hugging Face Hub's terms: license, tags, the datasets,
the library, and the test metrics with their values (``model-index``), so that a card pushed to the
Hub (or read by any tool of its ecosystem) is indexed by what the run measured.

    ---
    license: other
    tags: [covid_ddp, medical-imaging, chest-x-ray, covid-19, image-classification]
    ...
    ---
"""

from __future__ import annotations

from pathlib import Path

import yaml

TAGS = ["covid_ddp", "medical-imaging", "chest-x-ray", "covid-19", "image-classification", "not-for-clinical-use"]
INDEXED_METRICS = ("roc_auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "brier", "ece")


def front_matter(run_dir: Path, config: dict, metrics: dict | None) -> str:
    """The ``---``-fenced YAML block that opens the card."""
    data = config.get("data", {})
    datasets = _datasets(data)
    record = {
        # The weights' terms are those of the images they were trained on (the Data section), not
        # covid_ddp's MIT license: 'other', named so.
        "license": "other",
        "license_name": "the-training-data-terms",
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": TAGS,
        "datasets": datasets,
        "metrics": list(INDEXED_METRICS),
    }
    test = (metrics or {}).get("test")
    if test:
        record["model-index"] = [{"name": run_dir.name, "results": [{
            "task": {"type": "image-classification", "name": "COVID / non-COVID chest X-ray classification"},
            "dataset": {"name": ", ".join(datasets), "type": datasets[0], "split": "test"},
            "metrics": [{"type": name, "name": f"test {name}", "value": round(float(test[name]), 4)}
                        for name in INDEXED_METRICS if test.get(name) is not None]}]}]
    return "---\n" + yaml.safe_dump(record, sort_keys=False, allow_unicode=True) + "---\n"


def _datasets(data: dict) -> list[str]:
    """The sets the run read: MCFAM, the synthetic set, or the folders' names."""
    source = data.get("source")
    if source == "mcfam":
        return ["MCFAM"]
    if source == "synthetic":
        return ["covid_ddp-synthetic"]
    folders = data.get("data_dirs") or ([data["data_dir"]] if data.get("data_dir") else [])
    return [Path(folder).name for folder in folders] or ["unnamed-folder"]
