"""Offline evaluation of the indicators: OOD data sets available without downloads, the
protocol of the paper's sections 3 and 4 (auROC, FPR at 95 % TPR, average ranks, the
supervised baseline, thresholds on a mixed stream) and the speed comparison with
pytorch-ood. Service-side code: it reads data sets from disk and writes reports.

Run through `ood-monitor bench ood` and `ood-monitor bench speed`; see docs/evaluation.md.
"""
