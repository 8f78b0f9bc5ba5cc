"""Synthetic "knowledge probe": ultrasound-like breast lesions with controllable knowledge.

The probe is a dataset whose every kind of domain knowledge is known by construction, so
each strategy family of the survey (Xie et al., MedIA 2021) can be tested on a task where
its knowledge is *guaranteed* to be present, and with a knob that sets how useful it is:

* ``signal`` (0..1): how far the four BI-RADS-like lesion descriptors (shape, orientation,
  margin, echo) separate benign from malignant. Each lesion draws its *parameters*
  (irregularity amplitude, log aspect ratio, margin blur, darkness) from a class mean that is
  pulled toward the shared middle by ``1 - signal``, plus noise of a fixed width. The image is
  rendered from the parameters and the attributes are the parameters thresholded at the
  middle, so at ``signal=0`` the lesion says nothing about the label and at ``signal=1`` each
  descriptor separates the classes with d' = 4 (the four together: almost perfectly).
* ``radius`` ([r_min, r_max], px at 64 px): the lesion's equivalent radius is drawn uniformly
  from this range. With the original 4-12 px the lesion was too small to be read through the
  speckle by a small CNN at the suite's budget (issue 10); the calibrated default lives in
  configs/dataset/probe.yaml (docs/results/probe_calibration.md), the reader's default keeps
  the original range so that old option sets regenerate the same images.
* ``shortcut``: a bright square marker in the top-left corner whose presence agrees with
  "malignant" at an exact rate in train/val and at another rate (0.5: chance) in test; a
  model that reads the marker fails on test (probes attention supervision, ROI input).
* ``mask``/``bbox`` (segmentation, ROI, attention), ``attributes`` (attribute multitask),
  ``metadata`` (age, palpability: metadata fusion), ``text`` (reports written from the
  attributes, never from the label: report supervision), ``difficulty`` (curriculum),
  ``views`` (a second, independently rendered view of the same lesion: multiview).

Views: view 0 is the image; view 1 re-renders the same lesion parameters (size, aspect,
irregularity amplitude, margin blur, darkness) with fresh tissue and speckle, a new position
and tilt, and the outline's spicule pattern rotated by a random angle around the lesion
centre (another cross-section of the same mass). The aspect ratio is kept, not rotated by
90 degrees, because "taller-than-wide" is defined relative to the skin line in every view.
The shortcut marker, when enabled, is burnt into both views (``shortcut.in_views``).

Everything is generated in process with vectorised numpy, deterministically from the
options (``seed`` is the data seed, independent of the training seed). Each split has its
own random stream (SeedSequence([seed, split])), so changing ``n_test`` does not change the
training images. Rendering: a smooth tissue reflectivity map (depth attenuation, low
frequency texture, bright wavy ligament-like bands, faint fat-lobule-like distractor
blobs), multiplied by the lesion's hypoechoic profile (sigmoid of the signed distance to
the outline, width = margin blur), times speckle (magnitude of a spatially correlated
complex field with a small coherent part and an incoherent floor: Rician-like, without
black nulls), then log-compressed to uint8. About 0.4 ms per image and view on one core.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from dkbench.errors import RunConfigError
from dkbench.data.registry import data_files, register_dataset
from dkbench.data.spec import SPLITS, DatasetArrays, DatasetSpec, SplitArrays

GENERATOR_VERSION = 1

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "n_train": 2000,
    "n_val": 500,
    "n_test": 1000,
    "signal": 0.5,
    "radius": (4.0, 12.0),
    "normal_class": False,
    "age_gap": 10.0,
    "distractors": 1,
    "shortcut": {
        "enabled": False,
        "train_rate": 0.9,
        "test_rate": 0.5,
        "size": 4,
        "intensity": 255,
        "in_views": True,
    },
}

ATTRIBUTE_NAMES = ["shape", "orientation", "margin", "echo"]
ATTRIBUTE_VALUES = {
    "shape": ["oval", "irregular"],
    "orientation": ["parallel (wider-than-tall)", "not parallel (taller-than-wide)"],
    "margin": ["circumscribed", "indistinct"],
    "echo": ["hypoechoic", "markedly hypoechoic"],
}
METADATA_NAMES = ["age", "lesion_palpable"]
#: Attribute value of images without a lesion (normal class): use as ignore_index.
MISSING_ATTRIBUTE = -1

# Lesion parameters, in the order of ATTRIBUTE_NAMES: irregularity amplitude (relative
# radius modulation), log(height / width), margin blur (px at 64 px), darkness (fraction of
# the tissue echo removed inside the lesion). Class means at signal = 1 and noise width:
# (malignant - benign) / sigma = 4 for each parameter.
_MU_BENIGN = np.array([0.03, -0.45, 0.35, 0.62])
_MU_MALIGNANT = np.array([0.33, 0.45, 2.35, 0.90])
_SIGMA = np.array([0.075, 0.225, 0.5, 0.07])
_MIDDLE = (_MU_BENIGN + _MU_MALIGNANT) / 2  # attribute thresholds
_CLIP_LO = np.array([0.0, -0.85, 0.15, 0.2])
_CLIP_HI = np.array([0.6, 0.85, 4.5, 0.97])

_R_MIN, _R_MAX = DEFAULTS["radius"]  # default equivalent lesion radius range, px at 64 px (option `radius`)
_N_ANGLES = 512  # angular resolution of the lesion outline table
_DYN_RANGE_DB = 45.0  # log compression
_CHUNK = 64  # images rendered at once (keeps temporaries in cache)

#: difficulty = 0.5 * size_term + 0.5 * contrast_term, both clipped to [0, 1]:
#: size_term = (sqrt(A_max) - sqrt(area)) / (sqrt(A_max) - sqrt(A_min)), A = pi r^2 for the
#: radius range (r_min, r_max) scaled to the image size, area = mask pixels;
#: contrast_term = (0.35 - c) / (0.35 - 0.02), c = (mean grey of the ring within 4 px (x size/64)
#: around the mask's bbox, outside the mask - mean grey inside the mask) / 255, measured on the
#: rendered image (view 0, before the marker). Measured rather than taken from the darkness
#: parameter: the blurred margins of dark lesions lower their visible contrast, so difficulty
#: is nearly label-independent. Normal images (no lesion): 0.5.
DIFFICULTY_FORMULA = (
    "0.5*clip((sqrt(A_max)-sqrt(mask_area))/(sqrt(A_max)-sqrt(A_min)),0,1) + "
    "0.5*clip((0.35-c)/(0.35-0.02),0,1); A_min/A_max = pi*r^2 at the ends of options.radius "
    f"(default {_R_MIN}/{_R_MAX} px; x size/64); c = (mean grey of a 4 px ring around the mask bbox "
    "outside the mask - mean grey inside the mask)/255; normal images: 0.5"
)


# --- reports ---------------------------------------------------------------------------
_SHAPE_WORDS = (("oval", "oval-shaped"), ("irregular", "irregularly shaped"))
_ORIENT_WORDS = (("wider-than-tall", "parallel"), ("taller-than-wide", "non-parallel"))
_MARGIN_WORDS = (("circumscribed margins", "well-defined margins"),
                 ("indistinct margins", "ill-defined margins"))
_ECHO_WORDS = (("mildly hypoechoic", "hypoechoic"), ("markedly hypoechoic", "very hypoechoic"))
_TEMPLATES = (
    "{S}, {o}, {e} mass with {m}.",
    "{S} {e} mass in {o} orientation, with {m}.",
    "There is an {s}, {o}, {e} mass with {m}.",
)
_NORMAL_TEXTS = (
    "No focal mass identified.",
    "No discrete solid or cystic mass is seen.",
    "Normal fibroglandular tissue; no mass.",
)


def _orient_phrase(word: str, template: str) -> str:
    # "in parallel orientation" reads well; "in wider-than-tall orientation" does not
    if "orientation" in template and word in ("wider-than-tall", "taller-than-wide"):
        return {"wider-than-tall": "parallel", "taller-than-wide": "non-parallel"}[word]
    return word


def _report_table() -> np.ndarray:
    """All reports: rows = attribute combination (shape*8+orient*4+margin*2+echo), cols = variant."""
    rows = []
    for code in range(16):
        sh, ori, mar, ech = (code >> 3) & 1, (code >> 2) & 1, (code >> 1) & 1, code & 1
        row = []
        for t in _TEMPLATES:
            for vs in range(2):
                for vo in range(2):
                    for vm in range(2):
                        for ve in range(2):
                            s = _SHAPE_WORDS[sh][vs]
                            row.append(t.format(
                                S=s[0].upper() + s[1:], s=s,
                                o=_orient_phrase(_ORIENT_WORDS[ori][vo], t),
                                m=_MARGIN_WORDS[mar][vm], e=_ECHO_WORDS[ech][ve]))
        rows.append(row)
    return np.array(rows)


REPORTS = _report_table()


def report_variants(attributes) -> set[str]:
    """Every report the generator may write for one attribute vector (or a normal image)."""
    a = [int(v) for v in attributes]
    if a[0] == MISSING_ATTRIBUTE:
        return set(_NORMAL_TEXTS)
    return set(REPORTS[a[0] * 8 + a[1] * 4 + a[2] * 2 + a[3]].tolist())


def parse_report(text: str) -> list[int]:
    """Attributes back from a report (inverse of the generator; -1s for a normal report)."""
    t = text.lower()
    if "no " in t and "mass" in t and "with" not in t:
        return [MISSING_ATTRIBUTE] * 4
    shape = int("irregular" in t)
    orient = int("taller-than-wide" in t or "non-parallel" in t)
    margin = int("indistinct" in t or "ill-defined" in t)
    echo = int("markedly" in t or "very hypoechoic" in t)
    return [shape, orient, margin, echo]


# --- options ---------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """Nested mappings (OmegaConf DictConfig included) → plain dicts, for JSON and merging."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def resolve_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults merged with the given options; unknown keys and bad values raise ValueError."""
    given = _plain(dict(options or {}))
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise RunConfigError(f"probe: unknown option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    opts = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    sc = dict(DEFAULTS["shortcut"])
    given_sc = given.pop("shortcut", None) or {}
    if isinstance(given_sc, bool):
        given_sc = {"enabled": given_sc}
    unknown = set(given_sc) - set(sc)
    if unknown:
        raise RunConfigError(f"probe: unknown shortcut option(s) {sorted(unknown)}; valid: {sorted(sc)}")
    sc.update(given_sc)
    opts.update(given)
    opts["shortcut"] = sc
    for key in ("seed", "n_train", "n_val", "n_test", "distractors"):
        opts[key] = int(opts[key])
        if opts[key] < 0:
            raise RunConfigError(f"probe: option {key} must be >= 0, got {opts[key]}")
    radius = tuple(float(r) for r in opts["radius"])
    if len(radius) != 2 or not 1.0 <= radius[0] <= radius[1] <= 24.0:
        raise RunConfigError(f"probe: option radius must be [r_min, r_max] with 1 <= r_min <= r_max <= 24 "
                         f"(px at 64 px), got {opts['radius']}")
    opts["radius"] = list(radius)
    opts["signal"] = float(opts["signal"])
    if not 0.0 <= opts["signal"] <= 1.0:
        raise RunConfigError(f"probe: option signal must be in [0, 1], got {opts['signal']}")
    opts["normal_class"] = bool(opts["normal_class"])
    opts["age_gap"] = float(opts["age_gap"])
    sc["enabled"] = bool(sc["enabled"])
    sc["in_views"] = bool(sc["in_views"])
    for key in ("train_rate", "test_rate"):
        sc[key] = float(sc[key])
        if not 0.0 <= sc[key] <= 1.0:
            raise RunConfigError(f"probe: option shortcut.{key} must be in [0, 1], got {sc[key]}")
    sc["size"] = int(sc["size"])
    sc["intensity"] = int(sc["intensity"])
    if not 1 <= sc["size"] <= 16:
        raise RunConfigError(f"probe: option shortcut.size must be in [1, 16], got {sc['size']}")
    if not 0 <= sc["intensity"] <= 255:
        raise RunConfigError(f"probe: option shortcut.intensity must be in [0, 255], got {sc['intensity']}")
    return opts


def _check_spec(spec: DatasetSpec, opts: dict[str, Any]) -> None:
    if opts["normal_class"]:
        want_task, want_k, names = "multiclass", 3, ("normal", "benign", "malignant")
    else:
        want_task, want_k, names = "binary", 2, ("benign", "malignant")
    if spec.task != want_task or spec.num_classes != want_k:
        other = "false" if opts["normal_class"] else "true"
        raise RunConfigError(
            f"dataset '{spec.name}': probe with normal_class={str(opts['normal_class']).lower()} "
            f"is a {want_task} task with {want_k} classes {list(names)}, but the spec says "
            f"task={spec.task}, num_classes={spec.num_classes}. Either set `task: {want_task}` and "
            f"`num_classes: {want_k}` (and class_names) in the dataset YAML, or change the option "
            f"`options.normal_class` to {other}."
        )
    if spec.class_names and tuple(spec.class_names) != names:
        raise RunConfigError(
            f"dataset '{spec.name}': probe class_names must be {list(names)} "
            f"(normal_class={opts['normal_class']}), the spec says {list(spec.class_names)}"
        )
    if spec.in_chans != 1 or spec.spatial_dims != 2:
        raise RunConfigError(
            f"dataset '{spec.name}': the probe is 2-D grey-level; set in_chans: 1 and "
            f"spatial_dims: 2 (got {spec.in_chans}, {spec.spatial_dims})"
        )
    if spec.size < 32:
        raise RunConfigError(f"dataset '{spec.name}': probe size must be >= 32, got {spec.size}")


def options_checksum(opts: dict[str, Any], size: int) -> str:
    payload = {"options": opts, "size": int(size), "generator_version": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- rendering -------------------------------------------------------------------------
def _outline_table(rng: np.random.Generator, n: int, irregularity: np.ndarray) -> np.ndarray:
    """Relative radius R(phi) on _N_ANGLES angles, (n, A) float32, mean(R^2) = 1 (area kept).

    Every lesion has a gentle low-order lobulation; irregularity adds spicules (sharpened
    positive lobes of harmonics 5..13) and angular dents (harmonics 4..9).
    """
    phi = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False, dtype=np.float32)
    r = np.ones((n, _N_ANGLES), np.float32)
    for k in (2, 3):
        amp = rng.uniform(0.0, 0.04, n).astype(np.float32)
        ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        r += amp[:, None] * np.cos(k * phi[None] + ph[:, None])
    spikes = np.zeros((n, _N_ANGLES), np.float32)
    for _ in range(3):
        k = rng.integers(5, 14, n).astype(np.float32)
        ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        w = rng.uniform(0.5, 1.0, n).astype(np.float32)
        lobe = np.maximum(np.cos(k[:, None] * phi[None] + ph[:, None]), 0.0)
        spikes += w[:, None] * lobe**6
    spikes /= np.maximum(spikes.max(axis=1, keepdims=True), 1e-6)
    dents = np.zeros((n, _N_ANGLES), np.float32)
    for _ in range(2):
        k = rng.integers(4, 10, n).astype(np.float32)
        ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        dents += 0.5 * np.cos(k[:, None] * phi[None] + ph[:, None])
    amp = irregularity.astype(np.float32)[:, None]
    r += amp * (1.1 * spikes + 0.45 * dents)
    r = np.maximum(r, 0.35)
    r /= np.sqrt(np.mean(r**2, axis=1, keepdims=True))
    return r


def _render(
    rng: np.random.Generator,
    size: int,
    has_lesion: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    theta: np.ndarray,
    rx: np.ndarray,
    ry: np.ndarray,
    table: np.ndarray,
    blur: np.ndarray,
    darkness: np.ndarray,
    n_distractors: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Render n images (uint8 (n,H,W)) and lesion masks (bool (n,H,W)), in chunks."""
    n = len(has_lesion)
    scale = size / 64.0
    img = np.empty((n, size, size), np.uint8)
    mask = np.zeros((n, size, size), bool)
    yy = np.arange(size, dtype=np.float32)[None, :, None]
    xx = np.arange(size, dtype=np.float32)[None, None, :]
    # Per-image background parameters, drawn up front (order fixed → deterministic).
    atten = rng.uniform(0.3, 1.0, n).astype(np.float32)
    tex = [(rng.uniform(0.05, 0.15, n), rng.uniform(-2.5, 2.5, n), rng.uniform(0.3, 2.0, n),
            rng.uniform(0, 2 * np.pi, n)) for _ in range(3)]
    bands = [(rng.uniform(0.08, 0.95, n) * size, rng.uniform(0.0, 3.0, n) * scale,
              rng.uniform(0.5, 2.0, n), rng.uniform(0, 2 * np.pi, n),
              rng.uniform(0.3, 0.9, n), rng.uniform(0.6, 1.6, n) * scale) for _ in range(2)]
    dis = [(rng.uniform(0, size, n), rng.uniform(0, size, n), rng.uniform(3, 7, n) * scale,
            rng.uniform(0.4, 0.75, n), rng.uniform(0.25, 0.45, n)) for _ in range(n_distractors)]
    two_pi = np.float32(2 * np.pi)
    a_scale = np.float32(_N_ANGLES / (2 * np.pi))
    log_ref = np.float32(20 * np.log10(4.0))
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        m = e - s
        sl = slice(s, e)

        def col(v: np.ndarray) -> np.ndarray:
            return np.asarray(v[sl], np.float32)[:, None, None]

        # tissue reflectivity: depth attenuation, low-frequency texture (separable plane
        # waves), bright wavy ligament-like bands, faint hypoechoic fat-lobule-like blobs
        # depth attenuation + plane waves, as a rank-7 product (one batched matmul):
        # cos(ax + ay) = cos(ax) cos(ay) - sin(ax) sin(ay)
        left = [np.exp(-col(atten)[:, :, 0] * yy[0, :, 0] / size)]  # (m, H) per term
        right = [np.full((m, size), 0.75, np.float32)]  # (m, W) per term
        for amp, fx, fy, ph in tex:
            ax_ = two_pi * col(fx)[:, 0] * xx[0, 0] / size + col(ph)[:, 0]
            ay_ = two_pi * col(fy)[:, 0] * yy[0, :, 0] / size
            left += [np.cos(ay_), -np.sin(ay_)]
            right += [col(amp)[:, 0] * np.cos(ax_), col(amp)[:, 0] * np.sin(ax_)]
        tissue = np.matmul(np.stack(left, axis=2), np.stack(right, axis=1))
        for y0, wav, fr, ph, amp, wd in bands:
            yc = col(y0) + col(wav) * np.sin(two_pi * col(fr) * xx / size + col(ph))
            t = yy - yc
            t *= 1 / col(wd)
            np.square(t, out=t)
            np.negative(t, out=t)
            np.exp(t, out=t)
            t *= col(amp)
            tissue += t
        for dx0, dy0, dr, asp, dk in dis:
            qx = np.square((xx - col(dx0)) / col(dr))
            qy = np.square((yy - col(dy0)) / (col(dr) * col(asp)))
            t = qx + qy  # (1 - dk * sigmoid(4 (1 - q))) = 1 - dk/2 (1 + tanh(2 - 2 q))
            t *= -2
            t += 2
            np.tanh(t, out=t)
            t += 1
            t *= -0.5 * col(dk)
            t += 1
            tissue *= t
        # lesion: polar outline table, signed distance along the ray, sigmoid margin
        les = has_lesion[sl]
        if les.any():
            c, si = np.cos(col(theta)), np.sin(col(theta))
            dx, dy = xx - col(cx), yy - col(cy)
            u = dx * c + dy * si
            v = dy * c - dx * si
            un, vn = u / col(rx), v / col(ry)
            phi = np.arctan2(vn, un)
            phi += np.float32(np.pi)
            phi *= a_scale
            idx = phi.astype(np.intp)
            idx &= _N_ANGLES - 1
            idx += (np.arange(m) * _N_ANGLES)[:, None, None]
            big_r = table[sl].ravel().take(idx)
            np.square(un, out=un)
            np.square(vn, out=vn)
            un += vn
            rho = np.sqrt(un, out=un)
            np.maximum(rho, 1e-6, out=rho)
            mask[sl] = (rho < big_r) & les[:, None, None]
            np.square(u, out=u)
            np.square(v, out=v)
            u += v
            dist = np.sqrt(u, out=u)
            big_r /= rho
            big_r -= 1
            big_r *= dist  # = -signed distance to the outline along the ray, px
            big_r *= 0.5 / col(blur)
            w = np.tanh(big_r, out=big_r)
            w += 1  # 2 * sigmoid(-d / blur)
            w *= (-0.5 * col(darkness)) * les[:, None, None]
            w += 1
            tissue *= w
        # speckle: magnitude of a spatially correlated complex random field (the filtered
        # uniform noise is Gaussian by the central limit theorem) plus a small coherent
        # part (Rician, partially developed speckle: fewer black nulls)
        re = rng.random((m, size, size), dtype=np.float32)
        im = rng.random((m, size, size), dtype=np.float32)
        for f in (re, im):
            f -= 0.5
            gaussian_filter1d(f, 0.8 * scale, axis=1, output=f, truncate=2.5)
            gaussian_filter1d(f, 1.3 * scale, axis=2, output=f, truncate=2.5)
        rms = np.sqrt(np.mean(re**2, axis=(1, 2), keepdims=True) * 2)
        re += 0.5 * rms
        np.square(re, out=re)
        np.square(im, out=im)
        re += im
        re *= 1 / (np.mean(re, axis=(1, 2), keepdims=True))  # mean intensity 1
        re += 0.1  # incoherent floor: no black speckle nulls
        np.sqrt(re, out=re)
        np.maximum(tissue, 1e-3, out=tissue)
        re *= tissue
        re += 1e-4
        db = np.log10(re, out=re)
        db *= 20 * 255 / _DYN_RANGE_DB
        db += 255 * (1 - log_ref / _DYN_RANGE_DB)
        out = np.clip(db, 0, 255, out=db)
        img[sl] = out.astype(np.uint8)
    return img, mask


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def _agreement(rng: np.random.Generator, label: np.ndarray, positive: np.ndarray, rate: float) -> np.ndarray:
    """Marker presence that agrees with `positive` for exactly round(rate * n_c) of each class."""
    present = np.zeros(len(label), bool)
    for cls in np.unique(label):
        idx = np.flatnonzero(label == cls)
        agree = np.zeros(len(idx), bool)
        agree[rng.permutation(len(idx))[: int(round(rate * len(idx)))]] = True
        present[idx] = np.where(agree, positive[idx], ~positive[idx])
    return present


def generate_split(
    n: int, *, size: int = 64, split: str = "train", options: Mapping[str, Any] | None = None
) -> SplitArrays:
    """One split of the probe (options as in the YAML; see DEFAULTS)."""
    opts = resolve_options(options)
    if split not in SPLITS:
        raise ValueError(f"probe: split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([opts["seed"], SPLITS.index(split)]))
    scale = size / 64.0
    normal = opts["normal_class"]
    k = 3 if normal else 2
    label = _balanced_labels(rng, n, k).astype(np.int64)
    kind = label - 1 if normal else label  # -1 normal, 0 benign, 1 malignant
    has_lesion = kind >= 0
    malignant = kind == 1

    # lesion parameters: class mean pulled toward the middle by (1 - signal), plus noise
    sig = opts["signal"]
    mu = np.where(malignant[:, None], _MU_MALIGNANT, _MU_BENIGN)
    mean = _MIDDLE + sig * (mu - _MIDDLE)
    params = mean + _SIGMA * rng.standard_normal((n, 4))
    attributes = (params > _MIDDLE).astype(np.int64)
    attributes[~has_lesion] = MISSING_ATTRIBUTE
    params = np.clip(params, _CLIP_LO, _CLIP_HI)
    irregularity, log_aspect, blur, darkness = params.T
    blur = blur * scale

    # geometry (same lesion in both views; only position, tilt and contour phase change)
    r_min, r_max = opts["radius"]
    r_eq = rng.uniform(r_min, r_max, n) * scale
    rx = r_eq * np.exp(-log_aspect / 2)
    ry = r_eq * np.exp(log_aspect / 2)
    table = _outline_table(rng, n, irregularity)
    sc = opts["shortcut"]
    margin = sc["size"] + 3  # lesions stay this far from every border: the marker is outside
    avail = (size - 2 * margin) / 2 - 0.5
    extent = table.max(axis=1) * np.maximum(rx, ry)
    shrink = np.minimum(1.0, avail / extent)
    rx, ry, extent = rx * shrink, ry * shrink, extent * shrink

    def place() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cx = margin + extent + rng.uniform(0, 1, n) * (size - 1 - 2 * margin - 2 * extent)
        cy = margin + extent + rng.uniform(0, 1, n) * (size - 1 - 2 * margin - 2 * extent)
        theta = rng.uniform(-1, 1, n) * np.deg2rad(15)
        return cx, cy, theta

    cx, cy, theta = place()
    cx1, cy1, theta1 = place()
    roll = rng.integers(0, _N_ANGLES, n)
    table1 = np.take_along_axis(table, (np.arange(_N_ANGLES)[None] + roll[:, None]) % _N_ANGLES, 1)

    dn = opts["distractors"]
    image, mask = _render(rng, size, has_lesion, cx, cy, theta, rx, ry, table, blur, darkness, dn)
    view1, _ = _render(rng, size, has_lesion, cx1, cy1, theta1, rx, ry, table1, blur, darkness, dn)

    # bbox (x_min, y_min, x_max, y_max), max exclusive; NaN for empty masks
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    bbox = np.full((n, 4), np.nan, np.float32)
    nz = rows.any(axis=1)
    bbox[nz, 0] = cols[nz].argmax(axis=1)
    bbox[nz, 1] = rows[nz].argmax(axis=1)
    bbox[nz, 2] = size - cols[nz][:, ::-1].argmax(axis=1)
    bbox[nz, 3] = size - rows[nz][:, ::-1].argmax(axis=1)

    # difficulty: small and low-contrast lesions are hard
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    a_min, a_max = np.pi * (r_min * scale) ** 2, np.pi * (r_max * scale) ** 2
    # relative to the configured range, so "small" means small for this probe (equal ends: 0)
    span = max(np.sqrt(a_max) - np.sqrt(a_min), 1e-9)
    size_term = np.clip((np.sqrt(a_max) - np.sqrt(area)) / span, 0, 1)
    pad = 4 * scale
    gy = np.arange(size)[None, :, None]
    gx = np.arange(size)[None, None, :]
    b = np.nan_to_num(bbox)[:, :, None, None]
    ring = (gx >= b[:, 0] - pad) & (gx < b[:, 2] + pad) & (gy >= b[:, 1] - pad) & (gy < b[:, 3] + pad)
    ring &= ~mask
    grey = image.astype(np.float32)
    inside = (grey * mask).sum(axis=(1, 2)) / np.maximum(area, 1)
    around = (grey * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)
    contrast = (around - inside) / 255.0
    contrast_term = np.clip((0.35 - contrast) / (0.35 - 0.02), 0, 1)
    difficulty = np.where(has_lesion, 0.5 * size_term + 0.5 * contrast_term, 0.5).astype(np.float32)

    # shortcut marker (always drawn from the stream, so enabling it changes nothing else)
    rate = sc["train_rate"] if split in ("train", "val") else sc["test_rate"]
    present = _agreement(rng, label, malignant, rate)
    if sc["enabled"]:
        s = sc["size"]
        image[present, :s, :s] = sc["intensity"]
        if sc["in_views"]:
            view1[present, :s, :s] = sc["intensity"]

    # metadata: age (malignant older, heavy overlap) and palpability (malignant, large: more)
    age = np.where(malignant, 48.0 + opts["age_gap"], 48.0) + 12.0 * rng.standard_normal(n)
    age = np.where(has_lesion, age, 46.0 + 12.0 * rng.standard_normal(n))
    age = np.clip(np.round(age), 18, 95)
    size_norm = (r_eq / scale - r_min) / max(r_max - r_min, 1e-9)
    p_palp = np.where(has_lesion, 0.15 + 0.2 * malignant + 0.35 * size_norm, 0.03)
    palpable = (rng.uniform(0, 1, n) < p_palp).astype(np.float64)
    metadata = np.stack([age, palpable], axis=1).astype(np.float32)

    # reports from the attributes (never the label)
    code = np.clip(attributes, 0, 1) @ np.array([8, 4, 2, 1])
    variant = rng.integers(0, REPORTS.shape[1], n)
    text = REPORTS[code, variant].astype(object)
    if normal:
        text[~has_lesion] = np.array(_NORMAL_TEXTS, dtype=object)[
            rng.integers(0, len(_NORMAL_TEXTS), n)[~has_lesion]]
    text = text.astype(str)

    width = max(5, len(str(max(n - 1, 0))))
    ids = np.array([f"probe-{split}-{i:0{width}d}" for i in range(n)])
    return SplitArrays(
        image=image[:, None],
        label=label,
        ids=ids,
        extras={
            "mask": mask[:, None].astype(np.uint8),
            "bbox": bbox,
            "attributes": attributes,
            "metadata": metadata,
            "text": text,
            "difficulty": difficulty,
            "views": np.stack([image, view1], axis=1)[:, :, None],
        },
    )


def marker_present(image: np.ndarray, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Which images carry the shortcut marker, read back from the pixels ((N,1,H,W) → (N,) bool).

    Exact when the marker intensity is 255 (speckle never saturates a whole square).
    """
    sc = resolve_options(options)["shortcut"]
    if not sc["enabled"]:
        return np.zeros(len(image), bool)
    s = sc["size"]
    return (image[:, 0, :s, :s] == sc["intensity"]).all(axis=(1, 2))


@data_files("probe")
@data_files("probe_seg")
def probe_files(data_dir: Path, spec: DatasetSpec, options: Mapping[str, Any]) -> list:
    """No file (generated in process); the pre-flight still checks the options here, so a bad one
    is refused before a run folder exists."""
    resolve_options(options)
    return []


@register_dataset("probe")
def read_probe(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """The synthetic knowledge probe (data_dir is ignored: generated in process)."""
    opts = resolve_options(options)
    _check_spec(spec, opts)
    splits = {
        split: generate_split(opts[f"n_{split}"], size=spec.size, split=split, options=opts)
        for split in SPLITS
    }
    sc = opts["shortcut"]
    agreement = {}
    if sc["enabled"]:
        for split, arr in splits.items():
            mal = arr.label == (2 if opts["normal_class"] else 1)
            pres = marker_present(arr.image, opts)
            agreement[split] = float(np.mean(pres == mal)) if len(arr) else float("nan")
    notes: dict[str, object] = {
        "generator": f"dkbench probe v{GENERATOR_VERSION}",
        "options": opts,
        "attribute_names": list(ATTRIBUTE_NAMES),
        "attribute_values": {k: list(v) for k, v in ATTRIBUTE_VALUES.items()},
        "attribute_missing_value": MISSING_ATTRIBUTE,
        "metadata_names": list(METADATA_NAMES),
        "difficulty_formula": DIFFICULTY_FORMULA,
        "views": "view 0 = image; view 1 = same lesion parameters re-rendered: fresh tissue "
                 "and speckle, new position and tilt, contour pattern rotated (a new cross-section)",
        "shortcut_agreement": agreement,
    }
    return DatasetArrays(spec=spec, splits=splits, checksum=options_checksum(opts, spec.size),
                         notes=notes)


#: Extras of the probe that are pixel-aligned with its mask or per-image (views are not:
#: the second view re-renders the lesion elsewhere, so it cannot share the mask).
SEGMENTATION_EXTRAS = ("mask", "bbox", "difficulty")


@register_dataset("probe_seg")
def read_probe_seg(data_dir: Path, spec: DatasetSpec, **options: Any) -> DatasetArrays:
    """The probe as lesion segmentation: label = the lesion mask (N, 1, H, W) uint8.

    Same generator and options as `probe`; the benign/malignant class only shapes the lesions
    (oval vs irregular outlines), the distractor blobs are not in the mask, and the corner
    marker (if enabled) is just another distractor."""
    opts = resolve_options(options)
    if opts["normal_class"]:
        raise RunConfigError(f"dataset '{spec.name}': probe_seg has lesion images only; set options.normal_class: false")
    if spec.task != "segmentation" or spec.num_classes != 2:
        raise ValueError(
            f"dataset '{spec.name}': probe_seg is a segmentation task with 2 classes (background, lesion); "
            f"the spec says task={spec.task}, num_classes={spec.num_classes}"
        )
    if spec.in_chans != 1 or spec.spatial_dims != 2 or spec.size < 32:
        raise ValueError(f"dataset '{spec.name}': the probe is 2-D grey-level (in_chans 1, spatial_dims 2, size >= 32)")
    unknown = set(spec.provides) - set(SEGMENTATION_EXTRAS)
    if unknown:
        raise ValueError(f"dataset '{spec.name}': probe_seg can provide {list(SEGMENTATION_EXTRAS)}, not {sorted(unknown)}")
    splits = {}
    for split in SPLITS:
        arr = generate_split(opts[f"n_{split}"], size=spec.size, split=split, options=opts)
        splits[split] = SplitArrays(
            image=arr.image, label=arr.extras["mask"], ids=arr.ids,
            extras={k: arr.extras[k] for k in spec.provides},
        )
    notes: dict[str, object] = {"generator": f"dkbench probe v{GENERATOR_VERSION}", "options": opts,
                                "difficulty_formula": DIFFICULTY_FORMULA}
    return DatasetArrays(spec=spec, splits=splits, checksum=options_checksum(opts, spec.size), notes=notes)
