"""Evaluation: scoring trained weights (evaluate, ensembles), the shortcut audit, the model card, the
leave-one-source-out report and the ONNX export; everything that reads a finished run.
"""
