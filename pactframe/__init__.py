"""pactframe: training-free model merging with pluggable components.

Public API: the five contracts (:class:`Decomposer`, :class:`Preprocessor`,
:class:`Merger`, :class:`Evaluator`, :class:`Executor`; evaluators subclass
:class:`TensorEvaluator` or :class:`ModelEvaluator`), the base
:class:`MatrixMerger` for mergers of 2-D weights (:mod:`pactframe.matrix`), the
value types they exchange (:class:`Factorization`, :class:`LayerBundle`,
:class:`MergedTensor`), the ``hookimpl`` marker for plugins, and
:func:`build_registry`.
"""

from pactframe.contracts import (
    Component,
    Decomposer,
    Evaluator,
    Executor,
    Merger,
    ModelEvaluator,
    Preprocessor,
    TensorEvaluator,
    component_field,
    param,
)
from pactframe.errors import PactframeError
from pactframe.hookspecs import hookimpl
from pactframe.matrix import MatrixMerger
from pactframe.registry import Registry, build_registry
from pactframe.types import Factorization, LayerBundle, LowRank, MergedTensor, Record

__version__ = "0.1.0"

__all__ = [
    "Component",
    "Decomposer",
    "Evaluator",
    "Executor",
    "Factorization",
    "LayerBundle",
    "LowRank",
    "MatrixMerger",
    "Merger",
    "MergedTensor",
    "ModelEvaluator",
    "PactframeError",
    "Preprocessor",
    "Record",
    "Registry",
    "TensorEvaluator",
    "build_registry",
    "component_field",
    "hookimpl",
    "param",
    "__version__",
]
