"""``model_card.md``: what a reader of a paper must know about one run, in one Markdown file.

    update_model_card(Path("runs/demo"))   # (re)writes runs/demo/model_card.md from the run's files

covid-ddp-train writes it at its end; ``covid-ddp-evaluate``, ``covid-ddp-audit`` and ``covid-ddp-report``
bring it up to date. It is rebuilt every time from the run folder's own records (config.json,
metrics.json, the weights' sidecar, evaluation-*/evaluation.json, audit-*/audit.json,
reported.json), so it never disagrees with them and a missing piece is said to be missing.
The checklist at its end follows CLAIM 2024 (Tejani et al., Radiology: Artificial
Intelligence 2024;6(4):e240300): which items the card answers, which are left to the author.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.confounding import confounding_warning, markdown_table, single_class_sources, single_source_warning
from ..files import atomic_path
from ..metrics import wilson_replaced
from ..models.spec import ModelSpec
from ..models.weights import sidecar_path
from ..run_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from ..subgroups import SUBGROUP_METRICS
from .audit_reading import readings, verdict
from .card_metadata import front_matter

CARD_FILE = "model_card.md"
REPORTED_FILE = "reported.json"  # written into each run folder by covid-ddp-report
SHOWN_METRICS = ("roc_auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ppv", "npv",
                 "average_precision", "brier", "ece")
NOT_FOR_CLINICAL_USE = ("**Not for clinical use.** A research model, trained and tested on {data}; it has not been "
                        "validated for diagnosis, screening or triage of any patient.")

# CLAIM 2024: item -> what this card says of it ("card": answered here; "partly"; "author": left to the user).
CLAIM_ITEMS = (
    (1, "AI methodology identified in title/abstract", "author", "the paper's title and abstract"),
    (2, "Structured summary", "author", "the paper's abstract"),
    (3, "Background, intended use and role of the AI", "partly", "Intended use, here; the clinical background is "
     "the author's"),
    (4, "Study aims, objectives, hypotheses", "author", ""),
    (5, "Prospective or retrospective", "partly", "retrospective on existing image sets; say so in the paper"),
    (6, "Study goal", "author", ""),
    (7, "Data sources", "card", "Data: folders, files, sha256"),
    (8, "Inclusion and exclusion criteria", "partly", "sources excluded by flags are named; the sets' own criteria "
     "are their publishers'"),
    (9, "Data preprocessing", "partly", "square uint8 images as given (size in the recipe); covid-ddp-prepare's record where it made the folder"),
    (10, "Selection of data subsets", "card", "Split"),
    (11, "De-identification methods", "author", "the source sets'"),
    (12, "Missing data handling", "author", ""),
    (13, "Image acquisition protocol", "author", "unknown for public sets; per source where known"),
    (14, "Reference standard: how obtained", "author", "labels as the source sets give them"),
    (15, "Rationale for the reference standard", "author", ""),
    (16, "Source of reference standard annotations", "author", ""),
    (17, "Annotation of the test set", "author", ""),
    (18, "Inter- and intrarater variability", "author", ""),
    (19, "How data were assigned to partitions", "card", "Split"),
    (20, "Level at which partitions are disjoint", "card", "Split: image, patient or source"),
    (21, "Intended sample size of the test set", "partly", "the test set's size is here; how it was planned is "
     "the author's"),
    (22, "Detailed model description", "card", "Recipe (the network and its input size)"),
    (23, "Software libraries, frameworks, packages", "card", "Recipe: versions"),
    (24, "Initialization of parameters", "card", "Recipe: random, seeded"),
    (25, "Training approach", "card", "Recipe: the full command and every flag in config.json"),
    (26, "Final model selection", "card", "Recipe: the shipped epoch and why"),
    (27, "Ensembling", "partly", "covid-ddp-evaluate/predict/report with several --weights; this card is one run"),
    (28, "Performance metrics", "card", "Test results"),
    (29, "Significance and uncertainty", "card", "95% bootstrap intervals, and their resampling unit"),
    (30, "Robustness or sensitivity analysis", "partly", "Shortcut audit and held-out sources, where run"),
    (31, "Explainability or interpretability", "partly", "Grad-CAM share in the audit; not validated against "
     "annotated lesions"),
    (32, "Evaluation on internal data", "card", "Test results"),
    (33, "Testing on external data", "partly", "a held-out source (covid-ddp-report) or evaluate --split all on "
     "another set, where run"),
    (34, "Clinical trial registration", "author", "not applicable to a retrospective model study, or the author's"),
    (35, "Patients and examinations included and excluded", "partly", "images and patients per source and class; "
     "the flow diagram is the author's"),
    (36, "Demographics per partition", "partly", "Test results per subgroup, where meta.npz holds sex, age, view; "
     "their distribution per partition is the author's"),
    (37, "Performance metrics and statistical uncertainty", "card", "Test results"),
    (38, "Estimates of diagnostic performance and precision", "card", "Test results"),
    (39, "Failure analysis", "partly", "per-source results and the audit; case review is the author's"),
    (40, "Study limitations", "card", "Limitations"),
    (41, "Implications for practice", "author", "none is claimed here: not for clinical use"),
    (42, "Full protocol or technical details", "card", "this card, config.json and the run folder"),
    (43, "Availability of software, model, data", "partly", "covid_ddp and the weights file; the data's terms are "
     "its publishers'"),
    (44, "Funding and role of funders", "author", ""),
)


def update_model_card(run_dir: Path) -> Path | None:
    """Rewrite ``run_dir/model_card.md`` from its records; None (and nothing written) when
    ``run_dir`` holds no covid_ddp run (weights given without their run folder)."""
    run_dir = Path(run_dir)
    config = _read(run_dir / CONFIG_FILE)
    if not config or "config" not in config:
        return None
    card = build_card(run_dir, config, _read(run_dir / METRICS_FILE))
    path = run_dir / CARD_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(card)
    return path


def refresh_model_card(run_dir: Path, prog: str, quiet: bool = False) -> None:
    """``update_model_card`` for a command whose own outputs are written: a card that cannot be
    rebuilt (a damaged record, a full disk) is a warning, not a failure of the command."""
    from ..cli import say
    from ..errors import first_line

    try:
        path = update_model_card(run_dir)
    except Exception as error:
        say(f"{prog}: warning: {Path(run_dir) / CARD_FILE} not brought up to date ({type(error).__name__}: "
            f"{first_line(error)})")
        return
    if path is not None and not quiet:
        print(f"Model card: {path}")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_card(run_dir: Path, config: dict, metrics: dict | None) -> str:
    flags, data = config["config"], config.get("data", {})
    sections = [
        front_matter(run_dir, config, metrics),
        f"# Model card: {run_dir.name}", "",
        f"> {NOT_FOR_CLINICAL_USE.format(data=_data_named(data))}", "",
        *_intended_use(_model_of(config)),
        *_data_section(data, flags),
        *_split_section(flags, data),
        *_recipe_section(config, metrics),
        *_results_section(metrics, run_dir),
        *_per_source_section(metrics),
        *_subgroup_section(metrics),
        *_audit_section(run_dir),
        *_evaluations_section(run_dir),
        *_reported_section(run_dir),
        *_limitations(flags, data, metrics, _model_of(config)),
        *_checklist(),
    ]
    return "\n".join(sections).rstrip() + "\n"


def _kind_of_data(data: dict) -> str:
    """'synthetic', 'mcfam' (the public set), 'prepared' (images of one's own, through
    covid-ddp-prepare) or 'folders' (MCFAM-format folders of unknown origin)."""
    source = data.get("source")
    if source in ("synthetic", "mcfam"):
        return source
    return "prepared" if _prepare_records(data) else "folders"


def _data_named(data: dict) -> str:
    return {"synthetic": "synthetic images", "mcfam": "a public data set (MCFAM)",
            "prepared": "the images given to covid-ddp-prepare (listed under Data)",
            "folders": "the data folders listed under Data"}[_kind_of_data(data)]


def _prepare_records(data: dict) -> list[tuple[str, dict]]:
    """(folder, what covid-ddp-prepare recorded of it) for each folder it made."""
    if data.get("prepare"):
        return [(data.get("data_dir", "?"), data["prepare"])]
    return [(folder.get("data_dir", "?"), folder["prepare"]) for folder in data.get("folders") or [] if folder.get("prepare")]


def _prepare_lines(data: dict) -> list[str]:
    """covid-ddp-prepare's record of each folder it made: where the images came from, what it kept."""
    lines = []
    for folder, record in _prepare_records(data):
        inputs = record.get("inputs") or []
        given = "; ".join(f"`{entry['given']}` ({'class folders' if entry.get('kind') == 'folder' else 'CSV'}, "
                          f"`{entry['path']}`)" for entry in inputs) or "inputs not recorded (an earlier version)"
        sources = ", ".join(f"{name} {count}" for name, count in (record.get("per_dataset") or {}).items())
        lines += ["", f"`{folder}` was prepared by covid-ddp-prepare (its `prepare.json`, sha256 "
                      f"`{record.get('sha256', 'not recorded')}`) from {given}: {record.get('images_found', '?')} files "
                      f"found, {record.get('skipped', 0)} skipped as unreadable, {record.get('duplicates', 0)} duplicate "
                      f"pair(s) found and {record.get('dropped_duplicates', 0)} image(s) dropped for them, "
                      f"{record.get('images', '?')} images kept at {record.get('image_size', '?')} px"
                      + (f" (per source: {sources})" if sources else "") + "."]
    return lines


def _model_of(config: dict) -> dict:
    """The run's network and image size (a run from before config.json named them: the seed's Net at 64)."""
    return {**ModelSpec().to_dict(), **(config.get("model") or {})}


def _intended_use(model: dict) -> list[str]:
    size = model["image_size"]
    return ["## Intended use", "",
            f"Research on COVID / non-COVID classification of frontal chest X-rays ({size}x{size} grayscale): comparing recipes, "
            "studying shortcuts, teaching. Not a medical device; its calls must not inform the care of any patient. "
            "Input: one frontal chest radiograph as raw 0-255 pixels; output: P(COVID) and a call at the threshold "
            "chosen on the run's validation split.", ""]


def _data_section(data: dict, flags: dict) -> list[str]:
    lines = ["## Data", ""]
    folders = data.get("data_dirs") or ([data["data_dir"]] if data.get("data_dir") else [])
    source = data.get("source", flags.get("dataset"))
    if source == "synthetic":
        lines.append(f"Synthetic images made by covid_ddp (`--dataset synthetic`, {flags.get('synthetic_size')} images, "
                     f"seed {flags.get('seed')}): no patient's data.")
    elif source == "mcfam":
        lines.append(f"The MCFAM set ({', '.join(f'`{f}`' for f in folders) or 'the download cache'}).")
    else:
        lines.append(f"Images from the folders {', '.join(f'`{f}`' for f in folders)}.")
    lines += _prepare_lines(data)
    files = data.get("files") or {}
    if files:
        lines += ["", "| file | sha256 |", "| --- | --- |"]
        lines += [f"| `{name}` | `{entry.get('sha256', 'not recorded')}` |" for name, entry in files.items()]
    tables = data.get("by_source") or {}
    whole = _whole_table(tables)
    if whole:
        lines += ["", "Images (patients) per source and class, all parts together:", "", markdown_table(whole)]
        warning = confounding_warning(whole)
        if warning:
            lines += ["", f"**Confounded:** {warning}."]
        one_source = single_source_warning(whole)
        if one_source:
            lines += ["", f"**One source:** {one_source[0].upper()}{one_source[1:]}."]
    else:
        lines += ["", "No source column (meta.npz 'dataset'): the sources of the images are not known to this run."]
    return lines + [""]


def _whole_table(tables: dict) -> dict:
    """The table of all the run's images ("all"; for a config.json without one, the parts' tables
    summed, patients too, which counts a patient in two parts twice)."""
    if tables.get("all"):
        return tables["all"]
    whole = {}
    for part in ("train", "val", "test"):
        for source, classes in (tables.get(part) or {}).items():
            entry = whole.setdefault(source, {name: {"images": 0, "patients": 0} for name in classes})
            for name, counts in classes.items():
                entry[name]["images"] += counts["images"]
                entry[name]["patients"] = None if counts["patients"] is None or entry[name]["patients"] is None \
                    else entry[name]["patients"] + counts["patients"]
    return dict(sorted(whole.items()))


def _split_section(flags: dict, data: dict) -> list[str]:
    sizes = data.get("split_sizes", {})
    if flags.get("holdout_source"):
        unit = f"source: every image of `{flags['holdout_source']}` is the test set; the rest split by " + \
               ("patient" if flags.get("group_split") else "image")
    else:
        unit = "patient: every image of a patient lies in one part" if flags.get("group_split") else \
            "image: films of one patient may lie in different parts (no patient ids used)"
    lines = ["## Split", "", f"Unit: {unit}. Sizes (images): train {sizes.get('train', '?')}, validation "
             f"{sizes.get('val', '?')}, test {sizes.get('test', '?')} (test fraction {flags.get('test_size')}, "
             f"validation {flags.get('val_size')}, random_state 42; rows in `splits.npz`)."]
    if flags.get("exclude_source"):
        lines.append(f"Sources left out before splitting: {flags['exclude_source']}.")
    copies = data.get("copies_kept_together")
    if copies:
        lines.append(f"Copies of one image (exact, or near ones covid-ddp-prepare found): {copies['groups']} group(s), "
                     f"{copies['images']} images, each group in one part." if copies["groups"] else
                     "Copies of one image: none found (exact copies checked; near ones where covid-ddp-prepare ran).")
    tables = data.get("by_source") or {}
    if tables.get("test"):
        lines += ["", "Test part, images (patients):", "", markdown_table(tables["test"])]
    return lines + [""]


def _recipe_section(config: dict, metrics: dict | None) -> list[str]:
    flags, run = config["config"], config.get("distributed", {})
    environment = config.get("environment", {})
    packages = ", ".join(f"{name} {version}" for name, version in environment.get("packages", {}).items() if version)
    device = environment.get("cuda_device") or run.get("device", "?")
    lines = ["## Recipe", "",
             f"Model: {_model_words(_model_of(config), flags)}. {_optimisation_words(flags)}, "
             f"batch {flags.get('batch_size')}, {flags.get('epochs')} epochs.",
             "",
             f"- Command: `{config.get('command', 'not recorded')}`",
             f"- Processes: {run.get('num_processes', '?')} on {device}; precision {run.get('mixed_precision', '?')}",
             f"- Software: Python {environment.get('python', '?')}, {packages}; {environment.get('platform', '')}",
             f"- Augmentation: {_augmentation(flags)}"]
    if metrics and metrics.get("shipped"):
        lines.append(f"- Shipped: {metrics['shipped']['why']}")
    if config.get("resumes"):
        lines.append(f"- Resumed {len(config['resumes'])} time(s); changes: "
                     + ("; ".join(str(r.get('changed')) for r in config["resumes"] if r.get("changed")) or "none"))
    return lines + ["- Every flag: `config.json` beside this card.", ""]


def _optimisation_words(flags: dict) -> str:
    """The recipe's loss, optimizer, schedule and weight average (a config.json from before these
    flags ran the seed's: NLL, Adam, ReduceLROnPlateau)."""
    smoothing = flags.get("label_smoothing") or 0
    loss = f"NLL loss with label smoothing {smoothing}" if smoothing else "NLL loss"
    decay = flags.get("weight_decay") or 0
    optimizer = ("AdamW" if flags.get("optimizer") == "adamw" else "Adam") + f" lr {flags.get('lr')}" + (
        f", weight decay {decay}" if decay else "")
    if flags.get("schedule") == "cosine":
        warmup = flags.get("warmup_epochs") or 0
        schedule = "a cosine schedule to 0 over the run's steps" + (f" after {warmup} warm-up epoch(s)" if warmup else "")
    else:
        schedule = f"ReduceLROnPlateau (patience {flags.get('lr_patience')}, factor {flags.get('lr_factor')})"
    average = (f", the exponential moving average of the weights (decay {flags['ema']}) validated, selected and "
               "shipped" if flags.get("ema") else "")
    return f"{loss}, {optimizer}, {schedule}{average}"


def _model_words(model: dict, flags: dict) -> str:
    size = f"at {model['image_size']}x{model['image_size']}"
    start = (f"started from `{flags['init_weights']}` (first convolution summed to one channel, head replaced)"
             if flags.get("init_weights") else f"randomly initialised (seed {flags.get('seed')})")
    if model["name"] == "net":
        return ("the seed's `Net` (four Conv3x3-BatchNorm-ReLU-MaxPool blocks 1-32-64-128-256, FC 512 + dropout "
                f"{flags.get('dropout')}, FC 2, log-softmax) {size}, {start}")
    parameters = f", {model['parameters']:,} parameters" if model.get("parameters") else ""
    scale = {"xrv": ", pixels scaled to [-1024, 1024] as torchxrayvision's weights expect (`--input-scale xrv`)"}.get(
        flags.get("input_scale"), "")
    return f"`{model['name']}` with one input channel and two outputs{parameters}, {size}, {start}{scale}"


def _augmentation(flags: dict) -> str:
    chosen = [name for name in ("augment", "augment_acquisition", "augment_marks", "balance_sources") if flags.get(name)]
    return ", ".join("--" + name.replace("_", "-") for name in chosen) or "none (the seed's recipe)"


def _results_section(metrics: dict | None, run_dir: Path) -> list[str]:
    if not metrics or "test" not in metrics:
        return ["## Test results", "", "Not written yet: the run has not finished.", ""]
    test = metrics["test"]
    sidecar = _read(sidecar_path(run_dir / WEIGHTS_FILE)) or {}
    resampled = test.get("bootstrap")
    unit = _resampling(resampled) if resampled else "no bootstrap intervals (--bootstrap 0)"
    counts = test["n_per_class"]
    lines = ["## Test results", "",
             f"{test['n']} images ({counts['covid']} COVID, {counts['non_covid']} non-COVID), scored once by the "
             f"shipped weights, called COVID at P >= {test['threshold']:.3f} ({_threshold_origin(sidecar)}). {unit}. "
             "Calibration: Brier score and ECE (10 bins) below.", "",
             "| metric | value | 95% interval |", "| --- | --- | --- |"]
    intervals = test.get("ci95", {})
    wilson = wilson_replaced(test)
    for name in SHOWN_METRICS:
        value, interval = test.get(name), intervals.get(name)
        lines.append(f"| {name} | {'n/a' if value is None else f'{value:.3f}'} | "
                     f"{f'{interval[0]:.3f} - {interval[1]:.3f}' if interval else ''}{' *' if name in wilson else ''} |")
    if wilson:
        lines.append("\n\\* " + "; ".join(f"{name}: {method}" for name, method in wilson.items()) + ".")
    lines.append(f"\nConfusion matrix [[TN, FP], [FN, TP]]: {test['confusion_matrix']}.")
    return lines + [""]


def _threshold_origin(sidecar: dict) -> str:
    method = sidecar.get("method", "method not recorded")
    return f"{method}, chosen on the validation split" if sidecar.get("chosen_on") == "validation" else method


def _resampling(resampled: dict) -> str:
    """How the intervals were drawn (a metrics.json of covid_ddp 0.2 does not name the unit: images)."""
    unit, units = resampled.get("unit", "image"), resampled.get("units")
    drawn = f"{units} {unit}s" if units else f"the {unit}s"
    together = " (all films of a drawn patient together)" if unit == "patient" else ""
    seed = f", seed {resampled['seed']}" if "seed" in resampled else ""
    return f"95% percentile bootstrap intervals, {resampled.get('resamples', '?')} resamples of {drawn}{together}{seed}"


def _per_source_section(metrics: dict | None) -> list[str]:
    by_source = (metrics or {}).get("test", {}).get("per_source")
    if not by_source:
        return []
    lines = ["## Test results per source", "", "At the run's threshold; n/a where the source lacks the class the "
             "metric needs.", "", "| source | n (COVID / non-COVID) | ROC AUC | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- |"]
    for source, row in by_source.items():
        cells = ["n/a" if row[name] is None else f"{row[name]:.3f}" for name in ("roc_auc", "sensitivity", "specificity")]
        lines.append(f"| {source} | {row['n']} ({row['n_per_class']['covid']} / {row['n_per_class']['non_covid']}) | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _subgroup_section(metrics: dict | None) -> list[str]:
    table = (metrics or {}).get("test", {}).get("subgroups")
    if not table:
        return []
    lines = ["## Test results per subgroup", "", "A row per value of each meta.npz column of few values (ages in bands), "
             "at the run's threshold; 95% intervals in brackets; n/a where the row lacks the class the metric needs.",
             "", "| column | value | n (COVID / non-COVID) | ROC AUC | sensitivity | specificity |",
             "| --- | --- | --- | --- | --- | --- |"]
    for column, values in table.items():
        for value, row in values.items():
            cells = []
            for name in SUBGROUP_METRICS:
                interval = row.get("ci95", {}).get(name)
                cells.append(_number(row[name]) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
            few = " (too few images to say anything)" if row.get("too_few") else ""
            lines.append(f"| {column} | {value} | {row['n']} ({row['n_per_class']['covid']} / "
                         f"{row['n_per_class']['non_covid']}){few} | " + " | ".join(cells) + " |")
    return lines + [""]


def _evaluation_limitation(subgroups: dict | None) -> str:
    """What was not evaluated: always prospectively or clinically; subgroups beyond the columns the
    data held (the section above, when there is one)."""
    if not subgroups:
        return "No prospective, clinical or subgroup (age, sex, device) evaluation: the data holds no such fields."
    return (f"No prospective or clinical evaluation; subgroups only by {', '.join(sorted(subgroups))} (the columns "
            "the data holds: Test results per subgroup), none other.")


def _audit_section(run_dir: Path) -> list[str]:

    lines = []
    for path in sorted(run_dir.glob("audit-*/audit.json")):
        report = _read(path)
        if not report:
            continue
        lines += [f"## Shortcut audit ({report.get('split', '?')} split)", "",
                  f"{report['images']} images of {report.get('what', 'the split')}; `{path.relative_to(run_dir)}` and "
                  "its figure. Probes of known shortcuts, not a proof that none is used.", "", f"**Verdict:** {verdict(report)}", "",
                  "| measurement | value | reading (none / weak / strong sign of a shortcut) |", "| --- | --- | --- |"]
        lines += [f"| {name} | {value} | {reading} |" for name, value, reading in summary_rows(report)]
        lines.append("")
    return lines or ["## Shortcut audit", "", "Not run: `covid-ddp-audit --weights "
                     f"{run_dir / 'COVID_binary_classifier.pth'}`.", ""]


def _evaluations_section(run_dir: Path) -> list[str]:
    lines = []
    for path in sorted(run_dir.glob("evaluation-*/evaluation.json")):
        report = _read(path)
        if not report or "metrics" not in report:
            continue
        scored, data = report["metrics"], report.get("data", {})
        folders = ", ".join(map(str, filter(None, data.get("data_dirs") or [data.get("data_dir")])))
        named = folders or ("the synthetic set" if data.get("generator") else "the run's data")
        interval, resampled = scored.get("ci95", {}).get("roc_auc"), scored.get("bootstrap") or {}
        drawn = f"95% interval, {resampled.get('resamples', '?')} resamples, seed {resampled.get('seed', '?')}: "
        auc = "n/a" if scored.get("roc_auc") is None else f"{scored['roc_auc']:.3f}"
        lines.append(f"- `{path.parent.name}` ({report.get('split')} of {named}; "
                     f"{scored['n']} images): ROC AUC {auc}" + (f" ({drawn}{interval[0]:.3f} - {interval[1]:.3f})" if interval else "")
                     + f", sensitivity {_rate(scored.get('sensitivity'))}, specificity {_rate(scored.get('specificity'))}")
    return ["## Other evaluations", "", *lines, ""] if lines else []


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _reported_section(run_dir: Path) -> list[str]:
    reported = _read(run_dir / REPORTED_FILE)
    if not reported:
        return []
    beside = "every setting and seed" + (", and the seeds' ensemble," if reported.get("ensemble") else "")
    return ["## In a report", "", f"Seed {reported.get('seed')} of setting '{reported.get('setting')}', recipe "
            f"'{reported.get('recipe')}' in `{reported.get('report')}` ({beside} side by side).", ""]


def _limitations(flags: dict, data: dict, metrics: dict | None, model: dict) -> list[str]:
    size = model["image_size"]
    items = [f"Images are {size}x{size}: fine lung texture is gone; the model sees shapes, exposure and marks."
             if size < 224 else f"Images are {size}x{size}, below the resolution radiologists read films at."]
    lonely = single_class_sources(_whole_table(data.get("by_source") or {}))
    if lonely:
        items.append("Disease and source are confounded (" + ", ".join(f"{s}: {c} only" for s, c in lonely.items())
                     + "): the test metrics cannot tell a model that sees COVID from one that recognises hospitals. "
                     "Only a source held out whole that holds both classes measures that (covid-ddp-report).")
    if not flags.get("group_split"):
        items.append("The split is by image: follow-up films of one patient can sit in training and test, which "
                     "flatters the test metrics (--group-split splits by patient).")
    test = (metrics or {}).get("test", {})
    if test.get("n_per_class") and min(test["n_per_class"].values()) < 50:
        items.append(f"The test set holds {test['n_per_class']['covid']} COVID and {test['n_per_class']['non_covid']} "
                     "non-COVID images: its intervals are wide.")
    if data.get("source") == "synthetic":
        items.append("Trained on synthetic images: says nothing about radiographs.")
    items.append(_labels_limitation(data))
    items.append(_evaluation_limitation(test.get("subgroups")))
    return ["## Limitations", "", *(f"- {item}" for item in items), ""]


def _labels_limitation(data: dict) -> str:
    return {"synthetic": "Labels are the generator's: the images hold no disease.",
            "mcfam": "Labels are those the source sets give; no radiologist re-read them for this run.",
            "prepared": "Labels are those of the class folders or CSV given to covid-ddp-prepare; how they were "
                        "obtained (report, PCR, radiologist) is the author's to state, and no one re-read them for "
                        "this run.",
            "folders": "Labels are those of the data folders' label files; how they were obtained is the author's to "
                       "state."}[_kind_of_data(data)]


def _checklist() -> list[str]:
    marks = {"card": "answered here", "partly": "partly here", "author": "the author's"}
    lines = ["## CLAIM 2024 checklist", "",
             "Checklist for Artificial Intelligence in Medical Imaging, 2024 update (Tejani et al., Radiology: "
             "Artificial Intelligence 2024;6(4):e240300). Which items this card answers and which remain for the "
             "author of a paper.", "", "| item | topic | status | where / what |", "| --- | --- | --- | --- |"]
    lines += [f"| {number} | {topic} | {marks[status]} | {note} |" for number, topic, status, note in CLAIM_ITEMS]
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_rows(report: dict) -> list[tuple[str, str, str]]:
    """(measurement, value, its reading on a stated scale): the table of audit.md and of the model card."""
    marks, border, probe, heat = report["marks"], report["border"], report["source_probe"], report["gradcam"]
    found = readings(report)
    rows = []
    if "marks" in found:
        rows.append(("marks on non-COVID images: calls turned COVID (mean change of P(COVID))",
                     f"{marks['flipped_to_covid']} of {marks['called_non_covid']} ({_number(marks['flip_share'])}); "
                     f"{marks['mean_change']:+.3f}", found["marks"].text))
    auc_change = "n/a" if border["roc_auc_change"] is None else f"{border['roc_auc_change']:+.3f}"
    rows.append(("border hidden: change of ROC AUC (mean abs change of P(COVID))",
                 f"{auc_change} ({border['mean_abs_change']:.3f})", found["border"].text))
    for name, entry in (probe.items() if "skipped" not in probe else []):
        if "skipped" in entry:
            rows.append((f"source probe, {name}", "n/a", entry["skipped"]))
            continue
        listed = ", ".join(entry["sources"])
        rows.append((f"source probe, {name} ({listed}): ROC AUC", f"{entry['roc_auc']:.3f}",
                     found[f"source probe, {name}"].text))
    if "skipped" in probe:
        rows.append(("source probe", "n/a", probe["skipped"]))
    rows.append(("Grad-CAM heat inside the lung box", _number(heat["inside_share"]),
                 found["Grad-CAM"].text if "Grad-CAM" in found else "no heatmap"))
    return rows
