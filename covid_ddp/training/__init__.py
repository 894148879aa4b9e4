"""Training: the configuration, the job's processes and run folder (``session.Session``), the loop
(``trainer.train``, ``engine``), its batches, checkpoints and the finish. Never imports ``evaluation``:
what is done with a finished run (audit, model card) is the train command's.
"""
