"""Data: the MCFAM format and its download, folders read as one set, splits that do not leak,
radiograph files, the synthetic set, and the tensors training reads. Imports nothing above it.
"""
