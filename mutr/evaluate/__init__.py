"""Benchmark evaluation in each dataset's official protocol: ``mutr eval``.

:func:`evaluate` runs a model the way the official scripts do (not ``Predictor.segment``'s
window linking), writes the predictions in the layout below, scores them with
:mod:`mutr.metrics` and writes ``metrics.json``, ``per_video.csv`` and ``per_video.png`` (see
:mod:`mutr.evaluate.store` for the output folder and how an interrupted run resumes).
``evaluate(..., predictions=DIR)`` scores predictions already on disk, without a model.

===================  ==============================================================================
dataset              predictions layout (``--predictions DIR``; a model run writes ``out/predictions``)
===================  ==============================================================================
``ref-davis17``      ``<set>/<video>/<%05d>.png`` palette label maps, for the four annotator sets
                     ``Davis17_annot1``, ``…_annot1_full_video``, ``…_annot2``, ``…_annot2_full_video``
``avsbench-s4/ms3``  ``<name>.npy`` float logits [5, H, W], or ``<name>/<name>_<i>.png`` 8-bit
                     probabilities round(255·p), i = 1..5
``ref-youtube-vos``  ``Annotations/<video>/<exp_id>/<frame>.png`` 0/255 masks (zipped for the server)
===================  ==============================================================================

Metrics: Ref-DAVIS17: DAVIS 2017 unsupervised J/F (mean, recall, decay) per annotator set and
their mean over the four sets (what papers report); AVSBench: mIoU and F-score per metric batch
of ``metric_batch_size`` videos (official test.sh: 4), J = mIoU, F = F-score; Ref-YouTube-VOS:
none locally, ``submission.zip`` for the CodaLab server.
"""

from mutr.evaluate.common import Benchmark, EvalProgress, Scores
from mutr.evaluate.core import DATASETS, EvalResult, default_split, evaluate, open_benchmark
from mutr.evaluate.runner import ClipRunner, EncodedClip

__all__ = ["DATASETS", "Benchmark", "ClipRunner", "EncodedClip", "EvalProgress", "EvalResult", "Scores",
           "default_split", "evaluate", "open_benchmark"]
