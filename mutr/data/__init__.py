"""Datasets, training transforms and synthetic data, all yielding one sample type.

Training: every dataset's ``get(index, seed)`` returns a :class:`ClipSample`; a
:class:`JointSampler` picks keys ``(dataset, index, seed)`` for a :class:`JointDataset` and
:func:`collate` pads a batch to a multiple of 32. Evaluation: ``RefYouTubeVOSEval``,
``RefDavisEval`` and ``AVSBenchEval`` iterate whole videos/clips in each benchmark's protocol.
"""

from mutr.data.avsbench import AVSBench, AVSBenchClip, AVSBenchEval
from mutr.data.common import ClipBatch, ClipSample
from mutr.data.joint import JointDataset, JointSampler
from mutr.data.ref_davis import ANNOTATOR_SETS, DavisObject, DavisVideo, RefDavis, RefDavisEval
from mutr.data.ref_youtube_vos import RefYouTubeVOS, RefYouTubeVOSEval, YTVOSVideo
from mutr.data.safe_pickle import UnsafePickleError, load_log_mel_pickle
from mutr.data.synthetic import VOCABULARY, SyntheticDataset, make_clip, write_synthetic
from mutr.data.video_transforms import collate, plain_transforms, train_transforms

__all__ = [
    "ANNOTATOR_SETS", "AVSBench", "AVSBenchClip", "AVSBenchEval", "ClipBatch", "ClipSample",
    "DavisObject", "DavisVideo", "JointDataset", "JointSampler", "RefDavis", "RefDavisEval",
    "RefYouTubeVOS", "RefYouTubeVOSEval", "SyntheticDataset", "UnsafePickleError", "VOCABULARY",
    "YTVOSVideo", "collate", "load_log_mel_pickle", "make_clip", "plain_transforms",
    "train_transforms", "write_synthetic",
]
