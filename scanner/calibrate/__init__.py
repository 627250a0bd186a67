"""`scanner calibrate`: member labels that are true by construction, for any model.

Held-out text the model cannot have seen is split at random into members and non-members
(split), a copy of the model is fine-tuned on the members, each seen 1, 4 or 16 times
(finetune), and the attack is scanned, trained and measured on that copy (run). The detector
folder it writes drives `sweep` and `nightly` on the original model.
"""

from scanner.calibrate.finetune import FinetuneSpec
from scanner.calibrate.run import run_calibration

__all__ = ["FinetuneSpec", "run_calibration"]
