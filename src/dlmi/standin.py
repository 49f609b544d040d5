"""A synthetic stand-in per MedMNIST flag, written in MedMNIST's own npz format.

Each flag gets (1) its real split sizes (small sets in full, large ones scaled by a fraction),
(2) its real class priors per split, train/test shift included (:data:`PRIORS`, with sources),
and (3) a look built from real images that ship inside pip packages: stained tissue
(scikit-image's immunohistochemistry slide, re-stained as H&E) for pathology, blood cells,
kidney cells and skin; a fundus photograph (scikit-image's ``retina``) for RetinaMNIST; CT and
MR slices (pydicom's test files) for organs and chest X-rays; cardiac ultrasound frames
(pydicom) for breast ultrasound and OCT speckle. Images above 64 px are drawn at 64 px and
upsampled. Every image is a random crop, rotation and
intensity of those sources.

On that background each class draws a caricature of its finding (a lesion, an organ, a cell,
an opacity) whose size, position, shape and contrast come from overlapping per-class
distributions, and a few per cent of images show another class's finding (label noise): a
small CNN learns it well above the majority rate but not perfectly. The class looks are made
up for learnability; only the sizes and priors claim to match the real data sets.
Images are uint8, channels-last, exactly like the real files.
"""
from __future__ import annotations

from functools import cache
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

SPLITS = ("train", "val", "test")
STANDIN_VERSION = 5  # bump whenever the generator changes: cached stand-in files are remade
SMALL_SET = 6_000  # data sets with at most this many images are made at their full real size
LABEL_NOISE = 0.03  # share of single-label images drawn with another class's appearance
_CHUNK = 512
RENDER_MAX = 64  # larger images are drawn at 64 px and upsampled (then noise at full size)

# Class priors per split: ``{flag: (source, {split(s): weights})}``; weights are normalised.
# Where a paper gives counts, they are the counts; "approx." marks rounded figures of our own.
PRIORS: dict[str, tuple[str, dict[str, tuple[float, ...]]]] = {
    # Kather et al., PLoS Med 16:e1002730 (2019): NCT-CRC-HE-100K (train/val) and
    # CRC-VAL-HE-7K (test) class counts ADI BACK DEB LYM MUC MUS NORM STR TUM.
    "pathmnist": ("Kather 2019", {
        "train val": (10407, 10566, 11512, 11557, 8896, 13536, 8763, 10446, 14317),
        "test": (1338, 847, 339, 634, 1035, 592, 741, 421, 1233)}),
    # Wang et al., CVPR 2017 (NIH ChestX-ray14): positive counts per finding over 112,120
    # images; 60,361 (53.8 %) have no finding. MedMNIST's official test split has more
    # positives than train; that shift is not modelled (approx.: one rate for all splits).
    "chestmnist": ("Wang 2017", {
        "train val test": (11559, 2776, 13317, 19894, 5782, 6331, 1431, 5302, 4667, 2303, 2516,
                           1686, 3385, 227)}),
    # Tschandl et al., Sci Data 5:180161 (2018), HAM10000: akiec bcc bkl df mel nv vasc.
    "dermamnist": ("Tschandl 2018", {"train val test": (327, 514, 1099, 115, 1113, 6705, 142)}),
    # Kermany et al., Cell 172:1122 (2018): 37,206 CNV, 11,349 DME, 8,617 drusen, 51,140
    # normal in training (MedMNIST train/val); the test set has 250 of each class.
    "octmnist": ("Kermany 2018", {"train val": (37206, 11349, 8617, 51140),
                                  "test": (250, 250, 250, 250)}),
    # Kermany et al., Cell 172:1122 (2018), chest X-rays: 1,349 normal / 3,883 pneumonia in
    # training (MedMNIST train/val, ~74 % pneumonia), 234 / 390 in test (62.5 %).
    "pneumoniamnist": ("Kermany 2018", {"train val": (1349, 3883), "test": (234, 390)}),
    # Liu et al., Patterns 3:100512 (2022), DeepDRiD: DR grades 0-4. approx.: rounded shares
    # (grade 0 most common, grade 4 rarest), not counts from the paper.
    "retinamnist": ("approx. after Liu 2022", {"train val test": (0.45, 0.12, 0.2, 0.17, 0.06)}),
    # Al-Dhabyani et al., Data Brief 28:104863 (2020), BUSI: 210 malignant; 437 benign +
    # 133 normal = label 1 (73 %).
    "breastmnist": ("Al-Dhabyani 2020", {"train val test": (210, 570)}),
    # Acevedo et al., Data Brief 30:105474 (2020): basophil eosinophil erythroblast IG
    # lymphocyte monocyte neutrophil platelet.
    "bloodmnist": ("Acevedo 2020", {"train val test": (1218, 3117, 1551, 2895, 1214, 1420, 3329,
                                                        2348)}),
    # Woloshuk et al., Cytometry A 99:707 (2021), kidney cortex cells. approx.: rounded shares
    # (proximal tubule and collecting duct cells most common), not the paper's counts.
    "tissuemnist": ("approx. after Woloshuk 2021", {
        "train val test": (0.3, 0.05, 0.04, 0.1, 0.05, 0.03, 0.25, 0.18)}),
    # Bilic et al., Med Image Anal 84:102680 (2023) (LiTS CT) with organ boxes of Xu et al.,
    # IEEE TMI 38:1885 (2019). approx.: shares rounded from organ extent (liver and lungs span
    # the most slices), not counts from the papers. Same table for the three views.
    **{flag: ("approx. after Bilic 2023 / Xu 2019", {
        "train val test": (0.06, 0.06, 0.06, 0.08, 0.08, 0.08, 0.16, 0.12, 0.12, 0.08, 0.1)})
       for flag in ("organamnist", "organcmnist", "organsmnist")},
}


def priors(flag: str, split: str) -> np.ndarray:
    """Class priors of ``flag``'s ``split`` (positive rates per label for ChestMNIST)."""
    _, table = PRIORS[flag]
    weights = np.array(next(w for k, w in table.items() if split in k.split()), dtype=np.float64)
    if flag == "chestmnist":
        return weights / 112_120
    return weights / weights.sum()


def split_sizes(info: dict, fraction: float, size: int) -> dict[str, int]:
    """Stand-in split sizes: the real ones for data sets of at most :data:`SMALL_SET` images;
    else ``fraction`` of them (at least 800, or all of a smaller split). At most 2000 per split
    for images of 128 pixels and more."""
    cap = 2000 if size >= 128 else 50_000
    real = info["n_samples"]
    if sum(real.values()) <= SMALL_SET:
        return {s: int(min(cap, real[s])) for s in SPLITS}
    return {s: int(min(cap, max(min(800, real[s]), round(real[s] * fraction)))) for s in SPLITS}


# ---------------------------------------------------------------- source textures (cached)
def _norm(a: np.ndarray, lo: float = 1, hi: float = 99) -> np.ndarray:
    """``a`` scaled so its ``lo``-th and ``hi``-th percentiles become 0 and 1, clipped."""
    p, q = np.percentile(a, [lo, hi])
    return ((a - p) / (q - p + 1e-6)).clip(0, 1).astype(np.float32)


@cache
def _texture(name: str) -> np.ndarray:
    """A decoded source image as float32 (frames, H, W, C) in about [0, 1], read once."""
    if name in ("stain", "retina"):
        from skimage import color, data, transform
        if name == "retina":
            fundus = transform.resize(data.retina(), (192, 192), anti_aliasing=True)
            return fundus.astype(np.float32)[None]
        hed = color.rgb2hed(data.immunohistochemistry())
        return np.stack([_norm(hed[..., 0]), _norm(hed[..., 2])], -1)[None]  # H, DAB → "E"
    from .samples import read_dicom
    if name == "us":
        frames = read_dicom("examples_ybr_color.dcm").pixel_array
        return _norm(frames[:, 60:200, 110:230].mean(-1), 0, 99.5)[..., None]
    raw = read_dicom(f"{name.upper()}_small.dcm").pixel_array
    if name == "ct":  # soft-tissue window -160..240 HU (intercept -1024)
        return ((raw.astype(np.float32) - 1024 + 160) / 400).clip(0, 1)[None, ..., None]
    return _norm(raw.astype(np.float32))[None, ..., None]


def _crop(rng: np.random.Generator, name: str, n: int, size: int,
          fov: tuple[float, float] | np.ndarray, stretch: np.ndarray | float = 1.0) -> np.ndarray:
    """``n`` random rotated, flipped crops of a source (bilinear): (n, size, size, C).
    ``fov`` is the crop side in source pixels (a range, or one per image); ``stretch`` > 1
    squeezes the crop's width (fibres)."""
    tex = _texture(name)
    frames, h, w, _ = tex.shape
    side = (rng.uniform(*fov, n) if isinstance(fov, tuple) else np.asarray(fov)).astype(np.float32)
    stretch = np.broadcast_to(np.asarray(stretch, np.float32), (n,))
    side = np.minimum(side, min(h, w) / 1.45 / stretch)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    flip = np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    half = side * stretch * 0.71
    cy = rng.uniform(0, 1, n).astype(np.float32) * (h - 1 - 2 * half) + half
    cx = rng.uniform(0, 1, n).astype(np.float32) * (w - 1 - 2 * half) + half
    g = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    v, u = np.meshgrid(g, g, indexing="ij")
    u = u[None] * (side * flip * stretch)[:, None, None]
    v = v[None] * side[:, None, None]
    c, sn = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    rows = (cy[:, None, None] + c * v + sn * u).clip(0, h - 1.001)
    cols = (cx[:, None, None] - sn * v + c * u).clip(0, w - 1.001)
    r0, c0 = rows.astype(np.int32), cols.astype(np.int32)
    fr, fc = rows - r0, cols - c0
    idx = (rng.integers(0, frames, n, dtype=np.int32)[:, None, None] * h + r0) * w + c0
    out = np.empty((n, size, size, tex.shape[-1]), np.float32)
    for ch in range(tex.shape[-1]):  # np.take on one flat channel is many times faster
        flat = np.ascontiguousarray(tex[..., ch]).reshape(-1)
        top = np.take(flat, idx) * (1 - fc) + np.take(flat, idx + 1) * fc
        out[..., ch] = top * (1 - fr) + (np.take(flat, idx + w) * (1 - fc)
                                         + np.take(flat, idx + w + 1) * fc) * fr
    return out


# ---------------------------------------------------------------- shapes
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres' x and y in [-1, 1], each (1, size, size)."""
    g = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(g, g, indexing="ij")
    return x[None], y[None]


def _col(a: ArrayLike, n: int) -> np.ndarray:
    """``a`` (scalar or per image) as float32 (n, 1, 1), to broadcast over images."""
    return np.broadcast_to(np.asarray(a, np.float32), (n,)).reshape(n, 1, 1)


def _blob(rng: np.random.Generator, size: int, cx: ArrayLike, cy: ArrayLike, r: ArrayLike,
          aspect: ArrayLike = 1.0, irregular: ArrayLike = 0.0, soft: float = 0.25) -> np.ndarray:
    """Soft masks (n, size, size) in [0, 1] of ellipses (``aspect`` = width / height) at a random
    angle whose outline wobbles by ``irregular`` (harmonics 2-5 of random phase)."""
    n = len(np.atleast_1d(r))
    cx_, cy_, r_, aspect_, irregular_ = (_col(a, n) for a in (cx, cy, r, aspect, irregular))
    x, y = _grid(size)
    th = _col(rng.uniform(-0.4, 0.4, n), n)
    u = ((x - cx_) * np.cos(th) + (y - cy_) * np.sin(th)) / np.sqrt(aspect_)
    v = (-(x - cx_) * np.sin(th) + (y - cy_) * np.cos(th)) * np.sqrt(aspect_)
    rho = np.sqrt(u**2 + v**2)
    wobble = rng.normal(0, 1, (4, n, 1, 1)) / np.arange(2, 6).reshape(4, 1, 1, 1)
    coef = (irregular_ * wobble * np.exp(3j * rng.normal(0, 1, (4, n, 1, 1)))).astype(np.complex64)
    edge = np.ones_like(rho)
    if np.any(irregular_):  # sum of harmonics 2-5: Re(c_k e^{ik phi}), e^{i phi} = (u + iv) / rho
        turn = (u + 1j * v) / (rho + 1e-6)
        power = turn * turn
        for c in coef:
            edge += (c * power).real
            power *= turn
    r_ = np.maximum(r_, 0.02)
    return 0.5 + 0.5 * np.tanh((r_ * edge.clip(0.3) - rho) / (soft * r_ + 1.5 / size))


def _spots(rng: np.random.Generator, size: int, counts: np.ndarray, r: float,
           centre: tuple[float, float] = (0.0, 0.0), spread: float = 0.8) -> np.ndarray:
    """Union of ``counts[i]`` small round spots around ``centre`` per image: (n, size, size)."""
    n = len(counts)
    out = np.zeros((n, size, size), np.float32)
    for j in range(int(counts.max(initial=0))):
        on = counts > j
        k = int(on.sum())
        cx, cy = centre[0] + rng.uniform(-spread, spread, (2, k))
        radius = r * rng.uniform(0.6, 1.4, k)
        out[on] = np.maximum(out[on], _blob(rng, size, cx, cy, radius, soft=0.4))
    return out


def _params(rng: np.random.Generator, table: np.ndarray, app: np.ndarray, sd: np.ndarray) -> list[np.ndarray]:
    """Per-image parameters: the class's row of ``table`` plus Gaussian jitter ``sd`` per column;
    overlapping classes are what keeps the stand-in from being trivially separable."""
    p = table[app] + rng.normal(0, 1, (len(app), table.shape[1])) * sd
    return [p[:, j].astype(np.float32) for j in range(table.shape[1])]


def _od_to_rgb(*layers: tuple[np.ndarray, tuple[float, float, float]]) -> np.ndarray:
    """Beer-Lambert colour: optical densities (n, s, s) times stain vectors → RGB in [0, 1]."""
    od = sum(conc[..., None] * np.asarray(vec, np.float32) for conc, vec in layers)
    return np.exp(-od)


HEMATOXYLIN, EOSIN = (0.65, 0.70, 0.29), (0.07, 0.99, 0.11)  # Ruifrok & Johnston 2001
MELANIN, BLOOD = (0.35, 0.62, 0.95), (0.12, 0.95, 0.65)


# ---------------------------------------------------------------- looks per modality
def _xray(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Frontal chest X-ray: body, two dark lung fields with rib shadows and CT texture; findings
    are opacities (or lucencies) placed where they occur."""
    n = len(app)
    x, y = _grid(size)
    s, x0 = rng.uniform(0.88, 1.08, n), rng.normal(0, 0.05, n)
    lung_l = _blob(rng, size, x0 - 0.42 * s, -0.05, 0.62 * s, 0.42, 0.05, soft=0.3)
    lung_r = _blob(rng, size, x0 + 0.42 * s, -0.05, 0.62 * s, 0.42, 0.05, soft=0.3)
    lungs = np.maximum(lung_l, lung_r)
    heart = _blob(rng, size, x0 + 0.12, 0.35, 0.3 * s * rng.uniform(0.9, 1.1, n), 1.3, 0.05)
    ribs = 0.5 + 0.5 * np.sin(_col(rng.uniform(11, 15, n), n) * y + _col(rng.uniform(0, 6, n), n))
    img = 0.72 - 0.1 * np.abs(x) ** 3 - 0.42 * lungs * (1 - 0.15 * ribs) + 0.3 * heart * lungs
    img *= 0.8 + 0.4 * _crop(rng, "mr", n, size, (25, 44))[..., 0]
    if flag == "pneumoniamnist":
        side = np.where(rng.random(n) < 0.5, -0.42, 0.42) * s
        amp, radius = _params(rng, np.array([[0.0, 0.3], [0.3, 0.35]]), app[:, 0], np.array([0.1, 0.08]))
        opacity = _blob(rng, size, x0 + side, rng.uniform(-0.2, 0.35, n), radius, 0.7, 0.4, soft=0.6)
        img += np.abs(amp)[:, None, None] * opacity * lungs
    else:
        for k, (where, r_find, aspect, change) in enumerate(_CHEST_FINDINGS):
            on = app[:, k] == 1
            if not on.any():
                continue
            m = int(on.sum())
            side = np.where(rng.random(m) < 0.5, -0.42, 0.42) * s[on]
            centres: dict[str, tuple[ArrayLike, ArrayLike]] = {
                "lung": (x0[on] + side, rng.uniform(-0.3, 0.3, m)),
                "base": (x0[on] + side, 0.45), "apex": (x0[on] + side, -0.5),
                "heart": (x0[on] + 0.12, 0.35), "hilum": (x0[on] + 0.5 * side, 0.05),
                "low": (x0[on], 0.75)}
            cx, cy = centres[where]
            mask = _blob(rng, size, cx, cy, r_find * rng.uniform(0.7, 1.3, m), aspect, 0.3, soft=0.5)
            img[on] += change * rng.uniform(0.5, 1.2, (m, 1, 1)) * mask
    return img[..., None]


# ChestX-ray14 findings: (where, radius, width/height, intensity change).
_CHEST_FINDINGS: tuple[tuple[str, float, float, float], ...] = (
    ("base", 0.22, 2.0, 0.15),   # atelectasis
    ("heart", 0.42, 1.3, 0.18),  # cardiomegaly
    ("base", 0.3, 1.6, 0.22),    # effusion
    ("lung", 0.28, 0.8, 0.14),   # infiltration
    ("lung", 0.16, 1.0, 0.22),   # mass
    ("lung", 0.07, 1.0, 0.3),    # nodule
    ("lung", 0.3, 0.8, 0.16),    # pneumonia
    ("apex", 0.3, 1.2, -0.18),   # pneumothorax
    ("lung", 0.22, 1.0, 0.2),    # consolidation
    ("hilum", 0.35, 0.8, 0.14),  # edema
    ("lung", 0.5, 0.5, -0.12),   # emphysema
    ("lung", 0.4, 0.6, 0.1),     # fibrosis
    ("apex", 0.2, 2.5, 0.16),    # pleural thickening
    ("low", 0.18, 1.4, 0.2),     # hernia
)

# Organs (OrganA/C/S): (x, y, radius, width/height, irregularity, intensity change).
# Image right is the patient's left, as radiologists view it.
_ORGANS = np.array([
    [0.0, 0.15, 0.42, 1.3, 0.05, -0.2],    # bladder (fluid)
    [0.35, 0.0, 0.3, 1.0, 0.05, 0.45],     # femur-left (bone)
    [-0.35, 0.0, 0.3, 1.0, 0.05, 0.45],    # femur-right
    [0.05, -0.05, 0.55, 1.1, 0.1, 0.14],   # heart
    [0.35, 0.05, 0.32, 0.6, 0.15, 0.3],    # kidney-left
    [-0.35, 0.05, 0.32, 0.6, 0.15, 0.3],   # kidney-right
    [-0.15, 0.0, 0.62, 1.3, 0.15, 0.04],   # liver
    [0.3, 0.0, 0.5, 0.6, 0.1, -0.45],      # lung-left (air)
    [-0.3, 0.0, 0.5, 0.6, 0.1, -0.45],     # lung-right
    [0.0, 0.1, 0.35, 2.6, 0.2, -0.08],     # pancreas
    [0.3, -0.1, 0.36, 0.8, 0.15, 0.22],    # spleen
], dtype=np.float32)


def _ct(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Abdominal CT crop around an organ; the view sets what position can tell: a sagittal
    slice (OrganS) hardly shows left from right, a coronal one (OrganC) turns the organ upright."""
    n = len(app)
    table = _ORGANS.copy()
    if flag == "organsmnist":
        table[:, 0] *= 0.2
    if flag == "organcmnist":
        table[:, 3] = 1 / table[:, 3]
    cx, cy, r, aspect, irr, amp = _params(rng, table, app[:, 0],
                                          np.array([0.08, 0.08, 0.04, 0.15, 0.05, 0.04]))
    img = 0.3 + 0.25 * _crop(rng, "ct", n, size, (36, 70))[..., 0] * rng.uniform(0.7, 1.1, (n, 1, 1))
    organ = _blob(rng, size, cx, cy, r, np.abs(aspect) + 0.2, np.abs(irr), soft=0.3)
    inner = _crop(rng, "ct", n, size, (20, 40))[..., 0]
    img = img * (1 - 0.6 * organ) + organ * (0.3 * inner + 0.3 + amp[:, None, None])
    return img[..., None]


def _breast(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Breast ultrasound: speckle from cardiac ultrasound frames, depth attenuation, and a dark
    (hypoechoic) mass: malignant ones taller, more irregular and shadowing; a quarter of label 1
    (the 'normal' images) have none."""
    n = len(app)
    x, y = _grid(size)
    img = 0.35 + 0.6 * _crop(rng, "us", n, size, (30, 60))[..., 0]
    img *= (1.1 - 0.35 * (y + 1) / 2) * rng.uniform(0.7, 1.2, (n, 1, 1))
    cls = app[:, 0]
    # columns: radius, width/height, irregularity, darkness, posterior shading (- = shadow)
    table = np.array([[0.36, 0.8, 0.35, 0.7, -0.3], [0.28, 1.6, 0.1, 0.55, 0.2]])
    r, aspect, irr, dark, post = _params(rng, table, cls, np.array([0.07, 0.3, 0.1, 0.12, 0.15]))
    cx, cy = rng.uniform(-0.3, 0.3, (2, n)).astype(np.float32)
    mass = _blob(rng, size, cx, cy, r, aspect.clip(0.4), np.abs(irr), soft=0.35)
    mass[(cls == 1) & (rng.random(n) < 133 / 570)] = 0  # BUSI: 133 of 570 label-1 are normal
    below = _blob(rng, size, cx, cy + r + 0.35, r * 0.9, 0.5, 0.0, soft=0.6) * mass.max((1, 2), keepdims=True)
    img = img * (1 - dark[:, None, None].clip(0.1, 0.9) * mass) * (1 + post[:, None, None] * below)
    return img[..., None]


def _oct(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Retinal OCT B-scan: a curved layered band over the bright RPE line, speckled by
    ultrasound texture. CNV lifts the RPE, DME thickens the retina with dark cysts, drusen
    are small RPE bumps, normal scans keep a foveal pit."""
    n = len(app)
    x, y = _grid(size)
    cls = app[:, 0]
    top = _col(rng.uniform(-0.45, -0.1, n), n) + _col(rng.uniform(0, 0.4, n), n) * x**2 \
        + _col(rng.normal(0, 0.15, n), n) * x
    thick = _col(rng.uniform(0.35, 0.5, n) + 0.15 * (cls == 1) * rng.uniform(0.3, 1.3, n), n)
    pit = _col(0.15 * (cls == 3) * rng.uniform(0.2, 1.2, n), n)
    bump = np.zeros((n, size, size), np.float32)
    for j in range(4):  # drusen: up to four small bumps; CNV: one large one
        xc = _col(rng.uniform(-0.6, 0.6, n), n)
        h = np.where(cls == 0, 0.25 * (j == 0), np.where(cls == 2, 0.09 * (j < rng.integers(1, 5, n)), 0))
        h = _col(h * rng.uniform(0.3, 1.3, n), n)
        w = np.where(cls == 0, 0.3, 0.09)
        bump += h * np.exp(-((x - xc) / _col(w, n)) ** 2)
    top = top - pit * np.exp(-(x / 0.2) ** 2) - 0.5 * bump
    bottom = top + pit * np.exp(-(x / 0.2) ** 2) + thick - bump
    band = 1 / (1 + np.exp(-(y - top) / 0.03)) / (1 + np.exp(-(bottom - y) / 0.03))
    layers = 0.6 + 0.4 * np.sin((y - top) / thick * 9)
    rpe = np.exp(-(((y - bottom) / 0.05) ** 2))
    img = 0.08 + 0.4 * band * layers + 0.55 * rpe
    cysts = _spots(rng, size, np.where(cls == 1, rng.integers(1, 6, n), 0), 0.09, spread=0.5)
    img *= 1 - 0.8 * cysts * band
    img *= 0.5 + 0.9 * _crop(rng, "us", n, size, (25, 50))[..., 0]
    return img[..., None]


# PathMNIST tissue classes: (hematoxylin, eosin, white, stretch, field of view, nuclei dots).
_TISSUE_CLASSES = np.array([
    [0.25, 0.2, 0.65, 1.0, 60, 0],   # adipose: mostly empty fat cells
    [0.1, 0.1, 0.85, 1.0, 40, 0],    # background
    [0.8, 0.7, 0.25, 1.0, 90, 4],    # debris
    [1.4, 0.3, 0.05, 1.0, 90, 8],    # lymphocytes: dense dark nuclei
    [0.45, 0.35, 0.35, 1.0, 30, 0],  # mucus: pale and smooth
    [0.45, 1.3, 0.05, 3.0, 60, 0],   # smooth muscle: pink fibres
    [1.0, 0.8, 0.15, 1.0, 50, 2],    # normal colon mucosa
    [0.6, 1.0, 0.15, 2.0, 60, 1],    # cancer-associated stroma
    [1.3, 0.8, 0.0, 1.0, 90, 4],     # adenocarcinoma epithelium: crowded nuclei
], dtype=np.float32)


def _pathology(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """H&E tissue: the IHC slide's stains re-mixed per class (hematoxylin, eosin, empty space,
    fibre stretch, magnification, nuclei), greyscale for TissueMNIST's kidney cells."""
    n = len(app)
    cls = app[:, 0]
    # tissuemnist: eight kidney cell types from one table
    table = _TISSUE_CLASSES[[3, 6, 2, 7, 8, 0, 5, 4]] if flag == "tissuemnist" else _TISSUE_CLASSES
    sd = np.array([0.18, 0.18, 0.1, 0.4, 12, 1.5])
    h, e, white, stretch, fov, dots = _params(rng, table, cls, sd)
    tex = _crop(rng, "stain", n, size, fov.clip(20, 200), stretch.clip(1, 4))
    nuclei = _spots(rng, size, dots.round().clip(0, 10).astype(int), 0.08, spread=1.0)
    hem = (h.clip(0.05)[:, None, None] * (tex[..., 0] + 0.8 * nuclei)) * 1.6
    eos = e.clip(0.05)[:, None, None] * (0.4 + tex[..., 1]) * 0.8
    keep = 1 - white.clip(0, 0.95)[:, None, None]
    rgb = _od_to_rgb((hem * keep, HEMATOXYLIN), (eos * keep, EOSIN))
    if flag == "tissuemnist":
        return rgb.mean(-1, keepdims=True)
    return rgb


# BloodMNIST cells: (cell radius, nucleus radius, lobes, nucleus irregularity, cytoplasm eosin,
# granules eosin, granules hematoxylin).
_BLOOD = np.array([
    [0.55, 0.3, 2, 0.2, 0.4, 0.0, 1.2],   # basophil: dark granules
    [0.58, 0.26, 2, 0.1, 0.5, 1.2, 0.0],  # eosinophil: red granules
    [0.42, 0.28, 1, 0.05, 0.9, 0.0, 0.0], # erythroblast: round dark nucleus, red cytoplasm
    [0.66, 0.42, 1, 0.3, 0.25, 0.2, 0.2], # immature granulocyte
    [0.44, 0.36, 1, 0.05, 0.2, 0.0, 0.0], # lymphocyte: nucleus fills the cell
    [0.68, 0.4, 1, 0.4, 0.3, 0.0, 0.0],   # monocyte: folded nucleus
    [0.58, 0.2, 3.5, 0.1, 0.45, 0.3, 0.0],# neutrophil: lobed nucleus
    [0.0, 0.12, 3, 0.3, 0.0, 0.0, 0.0],   # platelet: small fragments only
], dtype=np.float32)


def _blood(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Blood smear: pale background with red cells, one centred white cell (or platelets)."""
    n = len(app)
    cell_r, nuc_r, lobes, irr, cyto, gran_e, gran_h = _params(
        rng, _BLOOD, app[:, 0], np.array([0.06, 0.05, 0.6, 0.08, 0.15, 0.25, 0.25]))
    tex = _crop(rng, "stain", n, size, (60, 120))
    rbc = _spots(rng, size, rng.integers(2, 6, n), 0.35, spread=1.0)
    cx, cy = rng.normal(0, 0.06, (2, n)).astype(np.float32)
    cell = _blob(rng, size, cx, cy, cell_r.clip(0), 1.0, 0.05)
    nucleus = np.zeros_like(cell)
    k = lobes.round().clip(1, 5).astype(int)
    angle0 = rng.uniform(0, 2 * np.pi, n)
    for j in range(5):
        on = k > j
        a = angle0 + 2 * np.pi * j / k
        off = np.where(k > 1, nuc_r * 0.9, 0)
        lobe = _blob(rng, size, cx + off * np.cos(a), cy + off * np.sin(a),
                     np.where(k > 1, nuc_r * 0.65, nuc_r).clip(0.03), 1.0, irr.clip(0), soft=0.2)
        nucleus = np.maximum(nucleus, lobe * on[:, None, None])
    granules = cell * (tex[..., 0] > 0.5)
    hem = 1.8 * nucleus + gran_h.clip(0)[:, None, None] * granules + 0.15 * tex[..., 0]
    eos = (0.45 * rbc * (1 - cell) + cyto.clip(0)[:, None, None] * cell
           + gran_e.clip(0)[:, None, None] * granules + 0.1 + 0.1 * tex[..., 1])
    return _od_to_rgb((hem, HEMATOXYLIN), (eos, EOSIN))


# DermaMNIST lesions: (radius, irregularity, melanin, blood, variegation).
_DERMA = np.array([
    [0.45, 0.25, 0.3, 0.55, 0.3],  # actinic keratosis / intraepithelial carcinoma
    [0.4, 0.2, 0.25, 0.4, 0.45],   # basal cell carcinoma
    [0.5, 0.2, 0.6, 0.15, 0.4],    # benign keratosis
    [0.3, 0.1, 0.5, 0.25, 0.2],    # dermatofibroma
    [0.55, 0.35, 0.95, 0.15, 0.7], # melanoma
    [0.45, 0.1, 0.75, 0.05, 0.15], # melanocytic nevus
    [0.35, 0.1, 0.1, 1.1, 0.2],    # vascular lesion
], dtype=np.float32)


def _skin(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Dermoscopy: skin tone with stain texture as pores and hair shadows, and a pigmented
    lesion whose size, border, melanin, blood and colour variegation depend on the class."""
    n = len(app)
    r, irr, mel, hb, var = _params(rng, _DERMA, app[:, 0], np.array([0.08, 0.08, 0.15, 0.15, 0.12]))
    tex = _crop(rng, "stain", n, size, (40, 100))
    cx, cy = rng.normal(0, 0.12, (2, n)).astype(np.float32)
    lesion = _blob(rng, size, cx, cy, r.clip(0.1), rng.uniform(0.7, 1.4, n), irr.clip(0), soft=0.35)
    mottle = 1 + var.clip(0)[:, None, None] * (2 * tex[..., 0] - 1)
    skin_mel = rng.uniform(0.1, 0.35, (n, 1, 1)) + 0.05 * tex[..., 1]
    melanin = skin_mel + 1.6 * mel.clip(0)[:, None, None] * lesion * mottle
    blood = 0.25 + 1.2 * hb.clip(0)[:, None, None] * lesion * (2 - mottle)
    return _od_to_rgb((melanin, MELANIN), (blood, BLOOD))


def _fundus(rng: np.random.Generator, app: np.ndarray, size: int, flag: str) -> np.ndarray:
    """Fundus photograph with diabetic retinopathy lesions: haemorrhages and exudates whose
    number grows with the grade (Poisson, so neighbouring grades overlap)."""
    n = len(app)
    grade = app[:, 0]
    img = _crop(rng, "retina", n, size, (150, 185)) * rng.uniform(0.75, 1.15, (n, 1, 1, 1))
    haem = _spots(rng, size, rng.poisson(np.array([0.3, 2.0, 4.0, 6.5, 8.0])[grade]), 0.06, spread=0.6)
    exud = _spots(rng, size, rng.poisson(np.array([0.1, 0.4, 1.5, 3.0, 4.0])[grade]), 0.07, spread=0.5)
    img = img * (1 - 0.6 * haem[..., None]) + exud[..., None] * np.array([0.5, 0.45, 0.05], np.float32)
    return img


_LOOKS: dict[str, Callable[[np.random.Generator, np.ndarray, int, str], np.ndarray]] = {
    "pathmnist": _pathology, "tissuemnist": _pathology, "bloodmnist": _blood,
    "dermamnist": _skin, "retinamnist": _fundus, "octmnist": _oct, "breastmnist": _breast,
    "pneumoniamnist": _xray, "chestmnist": _xray,
    "organamnist": _ct, "organcmnist": _ct, "organsmnist": _ct,
}


# ---------------------------------------------------------------- labels and assembly
def _labels(rng: np.random.Generator, flag: str, split: str, n: int) -> np.ndarray:
    """Labels with the split's priors: exact class counts (largest remainder), shuffled;
    ChestMNIST: independent findings at their positive rates."""
    p = priors(flag, split)
    if flag == "chestmnist":
        return (rng.random((n, len(p))) < p).astype(np.uint8)
    raw = p * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), counts)).astype(np.uint8)[:, None]


def _appearance(rng: np.random.Generator, labels: np.ndarray, n_classes: int, ordinal: bool) -> np.ndarray:
    """The class each image is drawn as: its label, except :data:`LABEL_NOISE` of them
    (a neighbouring grade for ordinal tasks)."""
    app = labels.astype(np.int64).copy()
    if labels.shape[1] > 1:
        return app
    noisy = rng.random(len(app)) < LABEL_NOISE
    shift = rng.choice([-1, 1], noisy.sum()) if ordinal else rng.integers(1, n_classes, noisy.sum())
    app[noisy, 0] = ((app[noisy, 0] + shift).clip(0, n_classes - 1) if ordinal
                     else (app[noisy, 0] + shift) % n_classes)
    return app


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, h, w, c) float images to (n, size, size, c)."""
    import torch
    from torch.nn.functional import interpolate

    x = torch.from_numpy(np.ascontiguousarray(img)).permute(0, 3, 1, 2)
    return interpolate(x, size=(size, size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()


def make_standin(info: dict, size: int, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Arrays for a stand-in npz: ``{split}_images`` / ``{split}_labels`` like the real file.
    ``info`` is ``medmnist.INFO[flag]``; the output depends only on (flag, size, fraction, seed)."""
    flag = info["python_class"].lower()
    if flag not in _LOOKS:
        raise ValueError(f"No stand-in for {flag!r}; stand-ins exist for {', '.join(sorted(_LOOKS))}.")
    n_classes, channels = len(info["label"]), info["n_channels"]
    ordinal = info["task"] == "ordinal-regression"
    arrays: dict[str, np.ndarray] = {}
    for i, (split, n) in enumerate(split_sizes(info, fraction, size).items()):
        rng = np.random.default_rng([seed, i, size])
        labels = _labels(rng, flag, split, n)
        app = _appearance(rng, labels, n_classes, ordinal)
        chunks = []
        for a in range(0, n, _CHUNK):
            img = _LOOKS[flag](rng, app[a:a + _CHUNK], min(size, RENDER_MAX), flag)
            if size > RENDER_MAX:
                img = _upsample(img, size)
            img += 0.025 * rng.standard_normal(img.shape, dtype=np.float32)
            if img.shape[-1] != channels:
                img = np.repeat(img.mean(-1, keepdims=True), channels, -1)
            chunks.append((img.clip(0, 1) * 255).round().astype(np.uint8))
        images = np.concatenate(chunks)
        arrays[f"{split}_images"] = images[..., 0] if channels == 1 else images
        arrays[f"{split}_labels"] = labels
    return arrays
