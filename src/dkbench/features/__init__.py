"""Hand-crafted, radiomics-style features (SURVEY.md family E: "features doctors weigh").

- `radiomics`: per-image feature vectors following pyradiomics' feature classes
  (`firstorder`, `glcm`, `shape2D`) plus a uniform-LBP histogram, computed with scikit-image
  (pyradiomics itself does not install on Python 3.11), and per-pixel feature maps in torch
  (Sobel edge magnitude, local standard deviation, local entropy, uniform LBP codes) for
  input-level fusion;
- `cache`: the vectors of a whole dataset computed once per (dataset, data digest, feature
  config) and stored under ``<cache_dir>/features/<key>.npz`` for every later run.
"""

from dkbench.features.cache import CachedFeatures, extraction_count, load_or_extract
from dkbench.features.radiomics import (
    MAP_NAMES,
    RadiomicsConfig,
    extract_features,
    feature_maps,
    feature_names,
    image_features,
)

__all__ = [
    "MAP_NAMES",
    "CachedFeatures",
    "RadiomicsConfig",
    "extract_features",
    "extraction_count",
    "feature_maps",
    "feature_names",
    "image_features",
    "load_or_extract",
]
