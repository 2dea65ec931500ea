"""Train SAM and SAM 2 on your own (image, instance labels) pairs.

    from napari_sam_stack import finetune
    trainer = finetune.train(model, [(stack, labels)], out="my_model.pt", steps=500)
    m = nss.load_model(checkpoint="my_model.pt", config="my_model.yaml")   # SAM 2
    m = nss.load_model(checkpoint="my_model.pt", model_type="auto")        # SAM 1

See docs/finetune.md.
"""

from ..errors import TrainingError
from .adapters import TRAINABLE
from .cli import add_cli
from .data import Sample, TrainingData
from .trainer import DEFAULTS, Trainer, train

__all__ = ["DEFAULTS", "TRAINABLE", "Sample", "Trainer", "TrainingData", "TrainingError", "add_cli", "train"]
