"""params.yaml as pydantic models: every stage reads its own section through them. Unknown keys are
rejected and every error names its dotted key, so a typo fails fast with one line.

    base.py         what every section shares (strict validation, safe paths, the training loop's keys)
    data.py, generators.py, synthesis.py, segmenter.py
                    the sections, beside the code each configures
    schema.py       Params, the root: every section and the checks that span them
    experiments.py  arms, regimes, variants and the ablation, all expanded to arms
    loading.py      YAML, `extends`, `--set`, and writing params files

Imports only seggen.errors and seggen.io (writing).
"""

from seggen.config.base import MAX_STEPS, SAFE_NAME, SAFE_PATH, LoopParams, SafePath, SplitName
from seggen.config.data import BenchmarkParams, CaptionParams, DataParams, DomainsParams
from seggen.config.experiments import VARIANT_SECTIONS, variant_path
from seggen.config.generators import (
    ControlNetParams,
    CorpusParams,
    GeneratorParams,
    Mask2ImgParams,
    PriorParams,
    SampleParams,
    Text2MaskParams,
    TextEncoderParams,
    TrainParams,
    UNetParams,
)
from seggen.config.loading import (
    DEFAULT_PARAMS,
    EXTENDS,
    REPLACED_WHOLE,
    _get_dotted,
    _read_tree,
    deep_merge,
    flatten,
    load_params,
    parse_overrides,
    profile_changes,
    write_params,
)
from seggen.config.schema import AblationParams, Params, ReportParams, TrackingParams
from seggen.config.segmenter import EvalParams, EvaluateParams, Mask2FormerParams, SegmenterParams, SegTrainParams
from seggen.config.synthesis import DEFAULT_STYLES, DaskParams, FilterParams, PlanSynthesisParams, SynthesizeParams

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_STYLES",
    "EXTENDS",
    "MAX_STEPS",
    "REPLACED_WHOLE",
    "SAFE_NAME",
    "SAFE_PATH",
    "VARIANT_SECTIONS",
    "AblationParams",
    "BenchmarkParams",
    "CaptionParams",
    "ControlNetParams",
    "CorpusParams",
    "DaskParams",
    "DataParams",
    "DomainsParams",
    "EvalParams",
    "EvaluateParams",
    "FilterParams",
    "GeneratorParams",
    "LoopParams",
    "Mask2FormerParams",
    "Mask2ImgParams",
    "Params",
    "PriorParams",
    "ReportParams",
    "SafePath",
    "SampleParams",
    "SegTrainParams",
    "SegmenterParams",
    "SplitName",
    "PlanSynthesisParams",
    "SynthesizeParams",
    "Text2MaskParams",
    "TextEncoderParams",
    "TrackingParams",
    "TrainParams",
    "UNetParams",
    "_get_dotted",
    "_read_tree",
    "deep_merge",
    "flatten",
    "load_params",
    "parse_overrides",
    "profile_changes",
    "variant_path",
    "write_params",
]
