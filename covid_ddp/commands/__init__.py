"""The command-line programs, one thin module each: flags in, one library call, a few lines out.

    covid-ddp-prepare   commands/prepare.py   folders of PNG/JPEG/DICOM -> a training folder (data.prepare)
    covid-ddp-train     commands/train.py     train, then audit and describe the run (training.trainer)
    covid-ddp-evaluate  commands/evaluate.py  metrics with intervals, figures (evaluation.evaluate)
    covid-ddp-predict   commands/predict.py   P(COVID) per image, CSV (models.inference)
    covid-ddp-audit     commands/audit.py     shortcut probes (evaluation.audit)
    covid-ddp-report    commands/report.py    leave-one-source-out over seeds (evaluation.report)
    covid-ddp-export    commands/export.py    ONNX (evaluation.export)

Each ends a user's mistake in one line and exit code 2 (``cli.run_cli``).
"""
