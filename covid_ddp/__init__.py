"""covid_ddp: distributed training of a COVID / non-COVID chest X-ray classifier with accelerate.

For research and education only; not for clinical or diagnostic use.
"""

from .gradcam import gradcam
from .model import Net
from .predict import load_model, predict

__all__ = ["Net", "gradcam", "load_model", "predict"]
__version__ = "0.1.0"
