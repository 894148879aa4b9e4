"""What a run folder holds, by name: the contract between training, which writes these files, and
every command that reads them (evaluate, predict, audit, report, the model card)."""

WEIGHTS_FILE = "COVID_binary_classifier.pth"  # the original script's name: a plain state_dict
WEIGHTS_SAFETENSORS = "COVID_binary_classifier.safetensors"  # the same tensors, without a pickle
METRICS_FILE = "metrics.json"  # the test split's metrics, what was shipped, the history
CONFIG_FILE = "config.json"  # the flags as they ran, the data, the processes, the software
SPLITS_FILE = "splits.npz"  # the rows of each part
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
TRACKERS_FILE = "trackers.json"  # --log-with's tracker runs: their ids, which a resume logs on into
LOCK_FILE = ".lock"  # held while a job writes the folder
