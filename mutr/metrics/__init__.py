"""Evaluation metrics, equal to the official toolkits that papers report.

* :mod:`mutr.metrics.davis`: J, F and their mean/recall/decay (Ref-DAVIS 2017,
  davis2017-evaluation).
* :mod:`mutr.metrics.avsbench`: mIoU and F-score per metric batch (AVSBench S4/MS3 ``test.py``).
"""

from mutr.metrics.avsbench import (
    DEFAULT_BATCH_SIZE,
    AVSBenchMeter,
    AVSBenchScores,
    evaluate_avsbench,
)
from mutr.metrics.davis import (
    METRIC_NAMES,
    DavisSummary,
    ObjectResult,
    VideoResult,
    evaluate_video,
    summarize,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "METRIC_NAMES",
    "AVSBenchMeter",
    "AVSBenchScores",
    "DavisSummary",
    "ObjectResult",
    "VideoResult",
    "evaluate_avsbench",
    "evaluate_video",
    "summarize",
]
