"""The science: sample-free white-box OOD indicators (Begon & Geurts), torch and Numba, no I/O.

- probe:       forward hooks on the head and every nn.BatchNorm2d (one pass, nothing kept)
- optimality:  MP, H, T1000, ODIN, NORM, NORM+, ANG, ANG++, PROJ, ACT, ACT+
- batchnorm:   IN-DMS ... DSS-EXT
- summary:     1C-Sum, its noise calibration and the model fingerprint
- kernels:     the same arithmetic as compiled loops, what the Scorer runs (docs/indicators.md)
- scorer:      Scorer, the public entry point

Definitions and decisions: docs/indicators.md.
"""

from monitor.indicators.scorer import ScoreBatch, Scorer
from monitor.indicators.summary import Calibration, fingerprint

__all__ = ["Calibration", "ScoreBatch", "Scorer", "fingerprint"]
