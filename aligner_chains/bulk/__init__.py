"""Bulk corrections on a Ray cluster: Ray Data datasets corrected by actors that each load the Aligner once.

Ray is optional (``pip install -e '.[ray]'``) and imported only when one of these names is used, so
``import aligner_chains`` never imports it. `correct_dataset` maps a `ray.data.Dataset` of question/answer
rows; `RayAligner` is an Aligner-like object whose ``correct_batch`` calls run on a pool of actors
(``aligner-chains eval --engine ray``); `AlignerSpec` says which Aligner each actor builds.
"""

from aligner_chains._lazy import lazy_dir, lazy_getattr

_LAZY_EXPORTS = {
    "AlignerSpec": "aligner_chains.bulk.spec",
    "CorrectionWorker": "aligner_chains.bulk.worker",
    "CORRECTION_COLUMNS": "aligner_chains.bulk.worker",
    **dict.fromkeys(["RayAligner", "correct_chunks", "correct_dataset", "require_ray"], "aligner_chains.bulk.ray_data"),
}

__all__ = sorted(_LAZY_EXPORTS)
__getattr__ = lazy_getattr(__name__, _LAZY_EXPORTS)
__dir__ = lazy_dir(__name__, _LAZY_EXPORTS)
