"""ood-monitor: sample-free white-box out-of-distribution monitoring for image classifiers.

Public contract (kept stable, see docs/):

    from monitor import Scorer, INDICATORS
    scorer = Scorer(model, mean=(0.286,), std=(0.353,))
    scores = scorer.score(x)   # x: [N, C, H, W] in [0, 1]
"""

from monitor.names import INDICATORS, SUMMARY_MEMBERS_EXCLUDED

__version__ = "0.1.0"

__all__ = ["INDICATORS", "SUMMARY_MEMBERS_EXCLUDED", "Scorer", "__version__"]


def __getattr__(name: str):
    # Scorer pulls in torch; importing monitor.thresholds or monitor.store should not.
    if name == "Scorer":
        from monitor.indicators import Scorer

        return Scorer
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
