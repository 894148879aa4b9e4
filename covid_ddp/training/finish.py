"""The end of a run: the selected epoch's weights shipped, the threshold chosen on validation, the
test split scored once with it, the run's outputs written.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from ..calibration import fit_temperature, fold_temperature, scaled
from ..data.splits import patient_ids, source_names
from ..metrics import DEFAULT_THRESHOLD, binary_metrics, choose_threshold, log_loss, per_source
from ..models.net import build_network, for_inference, weights_state_dict
from ..models.spec import ModelSpec
from ..models.weights import consolidated_state_dict
from ..predictions import predictions_table
from ..subgroups import subgroup_columns, subgroup_table
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import on_main_process
from .engine import Evaluation, PreparedRun, evaluate
from .run_folder import RunFolder
from .selection import BestWeights, Selection


def finish(run: PreparedRun, folder: RunFolder, accelerator: Accelerator, config: TrainConfig,
           monitored: Evaluation | None, board, progress: ckpt.TrainingProgress,
           selection: Selection, best: BestWeights, meta: dict | None = None) -> dict:
    """Ship the selected epoch's weights, pick the threshold on validation, score the test split
    once with it, write the run's outputs.

    The threshold and metrics.json describe the weights file itself: a run trained in bf16/fp16
    is scored again by the shipped fp32 weights (what covid-ddp-predict computes); an fp32 run
    that ships its last epoch already has that epoch's scores, and they are reused.
    """
    shipped_epoch = selection.shipped_epoch(progress.history, best.epoch, progress.epoch)
    trained = accelerator.unwrap_model(run.model, keep_torch_compile=False)
    if shipped_epoch != progress.epoch:
        best.restore_into(trained)  # (with --ema, the average of that epoch)
        monitored = None  # the last epoch's scores: not those of the shipped weights
    elif run.average is not None:  # the last epoch's average, whose scores ``monitored`` holds
        trained.load_state_dict(run.average.state_dict())
    why = selection.describe(progress.history, config.epochs, shipped_epoch)
    accelerator.print(f"Shipping {why}")
    # Net: the original's keys for raw pixels (normalisation folded into conv1); get_state_dict
    # is a collective under FSDP.
    weights = weights_state_dict(consolidated_state_dict(accelerator.get_state_dict(run.model)), trained)
    weights, calibration, monitored = calibrate(weights, run, accelerator, config, monitored)
    if monitored is None or accelerator.mixed_precision != "no":  # (None: resumed after the last epoch)
        scorer = shipped_model(weights, run.spec, accelerator.device)
        monitored = evaluate(scorer, run.monitor_loader, accelerator)
    else:
        scorer = run.model
    # With --val-size 0 the monitored split is the test split.
    final = monitored if run.monitor_name == "Test" else evaluate(scorer, run.test_loader, accelerator)

    def score() -> tuple[dict, dict]:  # every rank holds the same gathered scores: the main process does it once
        decision = {**decide_threshold(monitored if run.monitor_name == "Validation" else None, config),
                    "epoch": shipped_epoch, "shipped": why, "model": run.spec.to_dict(),
                    **({"temperature": calibration["temperature"]} if calibration else {})}
        patients = patient_ids(meta, final.rows)
        metrics = binary_metrics(final.p_covid, final.targets, final.loss, decision["threshold"],
                                 bootstrap=config.bootstrap, seed=config.seed, groups=patients)
        by_source = per_source(final.p_covid, final.targets, source_names(meta, final.rows), decision["threshold"])
        by_subgroup = subgroup_table(final.p_covid, final.targets, subgroup_columns(meta, final.rows),
                                     decision["threshold"], config.bootstrap, config.seed, patients)
        return decision, {**metrics, **({"per_source": by_source} if by_source else {}),
                          **({"subgroups": by_subgroup} if by_subgroup else {})}

    decision, test_metrics = on_main_process(accelerator, score, "score the test split")
    accelerator.print(f"Test set: Average loss: {final.loss:.4f}, Accuracy: {100 * test_metrics['accuracy']:.2f}% "
                      f"[COVID Detection] ({_describe_rates(test_metrics)}; threshold {decision['threshold']:.3f}, "
                      f"{decision['method']})")
    shown = accelerator.unwrap_model(scorer, keep_torch_compile=False)
    draw_final = board and (lambda: board.final(final, test_metrics, _hparams(config, accelerator), progress.epoch,
                                                shown, decision["threshold"]))
    shipped = {"epoch": shipped_epoch, "why": why, "select_by": config.select_by if selection.criterion else "last",
               "stopped_early": selection.stopped_early(progress.history, config.epochs)}
    if calibration:  # the test split's calibration before the temperature, and with it (the shipped weights')
        before = scaled(final.p_covid, 1 / calibration["temperature"])
        calibration = {**calibration, "test": before_and_after(before, final.p_covid, final.targets)}
        accelerator.print(f"Calibration: temperature {calibration['temperature']:.3f} (fitted on the validation "
                          f"split); test ECE {calibration['test']['ece'][0]:.3f} -> {calibration['test']['ece'][1]:.3f}")
    accelerator.log(tracked_results(test_metrics, calibration), step=run.step_at_end_of(progress.epoch))
    table = lambda: predictions_table(final.rows, final.p_covid, final.targets, decision["threshold"], meta)  # noqa: E731
    path = folder.write_outputs(decision, weights, {"test": test_metrics, "shipped": shipped,
                                                    **({"calibration": calibration} if calibration else {}),
                                                    "history": progress.history}, draw_final, table)
    accelerator.print(f"Model saved to {path}")
    return test_metrics


def calibrate(weights: dict, run: PreparedRun, accelerator: Accelerator, config: TrainConfig,
              monitored: Evaluation | None) -> tuple[dict, dict | None, Evaluation | None]:
    """--calibration temperature: (the weights with a temperature fitted on the validation scores
    folded into their last layer, the calibration record, None: the validation scores are those
    of other weights now). Unchanged without a validation split, or with --calibration none."""
    if config.calibration != "temperature" or run.monitor_name != "Validation":
        return weights, None, monitored
    if monitored is None or accelerator.mixed_precision != "no":  # the scores of these very weights, in fp32
        monitored = evaluate(shipped_model(weights, run.spec, accelerator.device), run.monitor_loader, accelerator)
    temperature = fit_temperature(monitored.p_covid, monitored.targets)  # the same gathered scores on every rank
    classifier = accelerator.unwrap_model(run.model, keep_torch_compile=False).classifier_name()
    record = {"method": "temperature", "temperature": temperature, "fitted_on": "validation",
              "validation": before_and_after(monitored.p_covid, scaled(monitored.p_covid, temperature),
                                             monitored.targets)}
    return fold_temperature(weights, classifier, temperature), record, None


def tracked_results(test_metrics: dict, calibration: dict | None) -> dict:
    """The test split's figures as the trackers take them (numbers, named test/...), and the temperature."""
    figures = {f"test/{name}": value for name, value in test_metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {**figures, **({"calibration/temperature": calibration["temperature"]} if calibration else {})}


def before_and_after(before: np.ndarray, after: np.ndarray, targets: np.ndarray) -> dict:
    """[before, after] of each calibration figure: ECE, Brier score, log-loss."""
    scores = [binary_metrics(p, targets) for p in (before, after)]
    return {"ece": [s["ece"] for s in scores], "brier": [s["brier"] for s in scores],
            "log_loss": [log_loss(p, targets) for p in (before, after)]}


def shipped_model(weights: dict, spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """The weights file's model as covid-ddp-predict runs it: fp32 (Net with BatchNorm folded)."""
    model = build_network(spec)
    model.load_state_dict(weights)
    return for_inference(model.to(device).eval())


def decide_threshold(validation: Evaluation | None, config: TrainConfig) -> dict:
    """The decision threshold (sidecar JSON beside the weights): chosen on the final model's
    validation scores; 0.5 when there is no validation split (--val-size 0), never the test's."""
    if validation is None:
        return {"threshold": DEFAULT_THRESHOLD,
                "method": f"default {DEFAULT_THRESHOLD} (--val-size 0: no validation split to choose on)"}
    chosen = choose_threshold(validation.p_covid, validation.targets, config.target_sensitivity)
    return {**chosen, "chosen_on": "validation", "validation_images": int(len(validation.targets))}


def _describe_rates(metrics: dict) -> str:
    def rate(value):
        return "n/a" if value is None else f"{value:.3f}"

    return (f"n={metrics['n']}, sensitivity {rate(metrics['sensitivity'])}, "
            f"specificity {rate(metrics['specificity'])}, ROC AUC {rate(metrics['roc_auc'])}")


def _hparams(config: TrainConfig, accelerator: Accelerator) -> dict:
    """TensorBoard's hparams accept only scalars and strings."""
    values = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
    values.update(num_processes=accelerator.num_processes, mixed_precision=accelerator.mixed_precision)
    return values
