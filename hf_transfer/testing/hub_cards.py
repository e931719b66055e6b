"""Model-card metadata as the Hub validates it on upload (``/api/validate-yaml`` and commits of README.md)."""

from __future__ import annotations

import re


def card_metadata(content: str) -> tuple[dict | None, list[str]]:
    """Parse the YAML front matter of a card; returns (metadata or None, errors)."""
    import yaml  # pyyaml; imported lazily to keep the module importable without it

    m = re.match(r"^---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*$", content, re.S | re.M)
    if not content.startswith("---") or m is None:
        return None, []
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return None, [f"Invalid YAML in the metadata: {e}".replace("\n", " ")]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, ["The metadata must be a YAML mapping"]
    return data, validate_metadata(data)


def validate_metadata(meta: dict) -> list[str]:
    """What the Hub refuses in a card's metadata: list-or-string fields, string fields, ``model-index`` shape."""
    errors: list[str] = []

    def str_or_list(key: str) -> None:
        v = meta.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            errors.append(f'"{key}" must be a string or an array of strings')

    for key in ("license", "datasets", "tags", "base_model", "language", "metrics"):
        str_or_list(key)
    for key in ("library_name", "pipeline_tag", "base_model_relation"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    if "model-index" not in meta:
        return errors
    mi = meta["model-index"]
    if not isinstance(mi, list) or not mi:
        return errors + ['"model-index" must be a non-empty array']
    for i, model in enumerate(mi):
        where = f'"model-index[{i}]"'
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f"{where}.name must be a string")
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f"{where}.results must be an array")
            continue
        for j, res in enumerate(results):
            w = f"{where}.results[{j}]"
            if not isinstance(res, dict):
                errors.append(f"{w} must be an object")
                continue
            task = res.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{w}.task.type must be a string")
            ds = res.get("dataset")
            if not isinstance(ds, dict) or not isinstance(ds.get("name"), str) or not isinstance(ds.get("type"), str):
                errors.append(f"{w}.dataset must have a string name and type")
            metrics = res.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{w}.metrics must be a non-empty array")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{w}.metrics[{k}] must have a string type and a value")
                elif not isinstance(metric["value"], (int, float, str)) or isinstance(metric["value"], bool):
                    errors.append(f"{w}.metrics[{k}].value must be a number or a string")
    return errors
