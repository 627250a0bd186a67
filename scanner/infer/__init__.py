"""Set-level membership: dataset inference (a p-value for "this model was trained on this set").

What other commands may use (nightly runs the set test on its own scans); the rest is this
package's own."""

from scanner.infer.run import (EXIT, INVALID, NOT_SHOWN, SEEN, compare_runs, reference_model_config, run_inference,
                               scan_under_reference_model, shift_check)
from scanner.infer.stats import DEFAULT_SPLITS

__all__ = ["DEFAULT_SPLITS", "EXIT", "INVALID", "NOT_SHOWN", "SEEN", "compare_runs", "reference_model_config",
           "run_inference", "scan_under_reference_model", "shift_check"]
