"""Synthetic multi-object segmentation benchmark, written to disk in the Pascal VOC-aug layout.

This is the embedded default dataset: it lets the whole incremental protocol run on a laptop CPU in
minutes, with no download. Each 64x64 scene holds 1-3 object classes from 15 shape classes (named by
plain words, so they also work as CLIP prompts) over a cluttered background. Format 3 draws a world
whose statistics are close to VOC's, and where appearance tells a class in part, as in VOC:

- **Objects per image** as VOC train_aug's image labels (``N_CLASSES_P``): 1, 2 or 3 classes, each one
  instance or (``P_SECOND_INSTANCE``) two; large objects (``SIDE``: a single object's bounding box
  spans 55-100% of the image side, several objects are smaller), occluding each other (paint order
  decides the label; every object keeps at least 40% of its area).
- **Appearance prior, informative but not decisive**: a shared palette of 12 colours; each class draws
  its colour from a class-specific mixture (its primary colour 0.45, secondary 0.25, any other 0.03),
  and every colour is the primary or secondary of 2-3 classes, so a colour narrows the class to a few
  candidates and the shape decides among them. A class draws its own texture (solid, stripes, dots or a
  gradient) half the time. A nearest-colour-centroid rule names 34% of objects (chance 6.7%). The
  background is a muted gradient with clutter in the same palette, so colour alone also fires there.
- **Void**: a one-pixel band on label boundaries (255), VOC's five-pixel band at 500 px.

Measured on 400 train scenes (``tests/test_synthetic.py::test_scene_statistics_are_vocs`` keeps them),
next to VOC 2012 train_aug. VOC's classes per image are measured from the image labels in
``shared/data/voc-wilson``; its pixel shares are the usual approximate figures (its masks are not here):

| statistic | VOC | synthetic v3 |
| --- | --- | --- |
| classes per image (mean) | 1.47 | 1.46 |
| images with 1 / 2 / 3+ classes | 64% / 27% / 9% | 63% / 29% / 9% |
| share of pixels per present class (mean) | about 17% | 17% (median 13%) |
| background / objects / void pixels | about 70% / 25% / 5% | 68% / 24% / 8% |

The parameters were fixed from these statistics before any method was measured on the world and were
not tuned to a method's result. Format 2 (2-4 small objects of any class, random colours: only shape
told the class) is refused with a message to regenerate.

Scenes are drawn on a supersampled canvas; the image is box-filtered down and the mask takes the
majority label of the same block, so the two stay exactly aligned. Each image has its own RNG seeded
by (seed, split, index): the files are identical whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from wilss.errors import DataError

FORMAT_VERSION = 3
CLASSES: tuple[str, ...] = (
    "background", "circle", "square", "triangle", "star", "cross", "ring", "heart", "arrow", "crescent",
    "diamond", "house", "tree", "cloud", "key", "lightning",
)
VOID = 255
JPEG_QUALITY = 95
SPLITS = {"train": (0, "train_aug.txt"), "val": (1, "val.txt")}  # name -> (RNG code, list file)
UPRIGHT = {"heart", "house", "tree", "cloud", "lightning"}  # tilted at most +-25 degrees, never flipped


class SyntheticMismatchError(DataError, ValueError):
    """An existing synthetic tree was generated with other parameters than those requested."""


# ---- shapes: each class is a list of (polygon (N, 2) in a unit frame, add?) drawn in order --------------

def _disc(cx: float, cy: float, r: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], float)


def _star(points: int, inner: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) - np.pi / 2  # first tip points up
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # y grows downwards
    return np.stack([x, y], 1)


def _normalise(parts: list) -> list:
    """Centre the shape's bounding box on 0 and scale its longer side to 2 (the unit frame [-1, 1])."""
    pts = np.concatenate([p for p, add in parts if add])
    lo, hi = pts.min(0), pts.max(0)
    return [((p - (lo + hi) / 2) * (2 / (hi - lo).max()), add) for p, add in parts]


SHAPES: dict[str, list] = {name: _normalise(parts) for name, parts in {
    "circle": [(_disc(0, 0, 1), True)],
    "square": [(_rect(-1, -1, 1, 1), True)],
    "triangle": [(_star(3, 0.5)[::2], True)],
    "star": [(_star(5, 0.42), True)],
    "cross": [(np.array([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
                         (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)]), True)],
    "ring": [(_disc(0, 0, 1), True), (_disc(0, 0, 0.55), False)],
    "heart": [(_heart(), True)],
    "arrow": [(np.array([(-1, -.25), (.1, -.25), (.1, -.65), (1, 0), (.1, .65), (.1, .25), (-1, .25)]),
               True)],
    "crescent": [(_disc(0, 0, 1), True), (_disc(0.5, -0.1, 0.9), False)],
    "diamond": [(np.array([(0, -1), (.58, 0), (0, 1), (-.58, 0)]), True)],  # elongated: never a square
    "house": [(np.array([(-.65, .9), (-.65, -.1), (-.9, -.1), (0, -.95), (.9, -.1), (.65, -.1),
                         (.65, .9)]), True), (_rect(-.17, .4, .17, .9), False)],  # door cut out
    "tree": [(_rect(-.15, .6, .15, 1), True), (np.array([(-.8, .7), (0, -.1), (.8, .7)]), True),
             (np.array([(-.62, .25), (0, -.6), (.62, .25)]), True),
             (np.array([(-.45, -.2), (0, -1), (.45, -.2)]), True)],
    "cloud": [(_disc(-.5, .1, .4), True), (_disc(0, -.15, .55), True), (_disc(.5, .1, .4), True),
              (_rect(-.5, .1, .5, .5), True)],
    "key": [(_disc(-.55, 0, .45), True), (_rect(-.2, -.17, 1, .17), True), (_rect(.5, .1, .7, .5), True),
            (_rect(.78, .1, .98, .38), True), (_disc(-.6, 0, .2), False)],
    "lightning": [(np.array([(-.1, -1), (.6, -1), (.2, -.25), (.6, -.25), (-.4, 1), (-.1, .1),
                             (-.5, .1)]), True)],
}.items()}
assert tuple(SHAPES) == CLASSES[1:]


# ---- appearance: a shared palette, class-specific preferences ------------------------------------------

# Twelve saturated colours shared by all classes (RGB). Each class prefers two of them (a primary and a
# secondary), and every colour is some class's primary and some other class's secondary, so a colour
# narrows the class down to a few candidates and the shape decides among them (test_synthetic measures it).
PALETTE = np.array([
    (220, 40, 40), (240, 140, 30), (235, 215, 50), (150, 220, 60), (40, 150, 60), (30, 160, 150),
    (90, 180, 235), (40, 70, 200), (130, 60, 180), (235, 120, 180), (140, 85, 40), (235, 235, 235),
], float)  # red, orange, yellow, lime, green, teal, sky, blue, purple, pink, brown, white
PRIMARY = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2)  # per class 1..15: its palette indices
SECONDARY = (5, 8, 11, 2, 9, 0, 3, 10, 1, 6, 4, 7, 9, 4, 7)
P_PRIMARY, P_SECONDARY = 0.45, 0.25  # the other 10 colours share the remaining 0.30 (0.03 each)
TEXTURES = ("solid", "stripes", "dots", "gradient")
P_TEXTURE = 0.5  # a class draws its own texture (class id mod 4) with this probability, else any of the 4
COLOUR_JITTER = 14.0  # per-channel std of an object's colour around its palette entry
# Objects per scene follow VOC train_aug's image labels: 1, 2 or 3 classes with these probabilities
# (measured 0.637 / 0.273 / 0.073, 4+ 0.016; the rare 4+ are folded into 3), each class one instance,
# or two with P_SECOND_INSTANCE (VOC holds about 2.3 objects of 1.47 classes per image).
N_CLASSES_P = (0.64, 0.27, 0.09)
P_SECOND_INSTANCE = 0.25
SIDE = (0.55, 1.0)  # longer side of a single object's bounding box, as a share of the image side
assert len(PRIMARY) == len(SECONDARY) == len(CLASSES) - 1


def class_colour_probs(cls: int) -> np.ndarray:
    """(12,) probabilities over PALETTE of an object of class ``cls`` (1..15)."""
    p = np.full(len(PALETTE), (1 - P_PRIMARY - P_SECONDARY) / (len(PALETTE) - 2))
    p[PRIMARY[cls - 1]], p[SECONDARY[cls - 1]] = P_PRIMARY, P_SECONDARY
    return p


def _object_colour(rng: np.random.Generator, cls: int, under: np.ndarray) -> np.ndarray:
    """An RGB colour for an object of ``cls``: a palette entry drawn from the class's preferences,
    jittered; redrawn (up to 5 times) while it is within 80 of ``under``, the mean colour it covers."""
    for _ in range(5):
        c = PALETTE[rng.choice(len(PALETTE), p=class_colour_probs(cls))] + rng.normal(0, COLOUR_JITTER, 3)
        if np.linalg.norm(c - under) >= 80:
            break
    return np.clip(c, 0, 255)


# ---- scene rendering ------------------------------------------------------------------------------------

def _supersample(size: int) -> int:
    """Canvas oversampling: 4x for small images (anti-aliased edges), less for big ones (memory)."""
    return max(1, min(4, 512 // size))


def _background(rng: np.random.Generator, hi: int, k: int) -> Image.Image:
    """Muted two-colour gradient + low-frequency noise + thin lines and small blobs in palette colours.

    The gradient is pulled halfway to grey, so saturated objects stand out from it on average; the clutter
    uses the objects' palette, so colour alone also fires on background."""
    a = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:6, 0:6]  # a coarse 6x6 grid, bicubic-upsampled: the result is smooth anyway
    u = xs * np.cos(a) + ys * np.sin(a)
    t = (u - u.min()) / np.ptp(u)  # (6, 6) in [0, 1]
    c0, c1 = (rng.uniform(0, 255, (2, 3)) + 128) / 2
    coarse = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 20, (6, 6, 3))  # (6, 6, 3)
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((hi, hi), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)

    def clutter() -> tuple:
        return tuple(np.clip(PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, COLOUR_JITTER, 3), 0, 255)
                     .astype(int).tolist())

    for _ in range(rng.integers(0, 4)):  # polylines 1 output pixel wide
        pts = rng.uniform(0, hi, (rng.integers(2, 4), 2))
        draw.line(pts.ravel().tolist(), fill=clutter(), width=k)
    for _ in range(rng.integers(0, 4)):  # irregular blobs, radius 1-2.5 output pixels: too small for a class
        ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
        r = rng.uniform(1, 2.5) * k * rng.uniform(0.5, 1, 7)
        pts = rng.uniform(0, hi, 2) + np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
        draw.polygon(pts.ravel().tolist(), fill=clutter())
    return img


def _object_mask(rng: np.random.Generator, name: str, hi: int, scale: float) -> np.ndarray:
    """(hi, hi) bool mask of one randomly scaled, stretched, rotated and placed instance of ``name``.

    scale: shrinks the object's size range (SIDE) when the scene holds several objects."""
    side = rng.uniform(*SIDE) * scale * hi  # longer side of the shape's bounding box
    stretch = rng.uniform(0.88, 1.12)  # mild aspect jitter; the diamond stays far thinner than a square
    a = np.deg2rad(rng.uniform(-25, 25) if name in UPRIGHT else rng.uniform(0, 360))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = rng.uniform(0.3 * side, hi - 0.3 * side, 2)  # up to 20% of the object may leave the frame
    img = Image.new("L", (hi, hi), 0)
    draw = ImageDraw.Draw(img)
    for pts, add in SHAPES[name]:
        xy = (pts * [stretch, 1 / stretch] * (side / 2)) @ rot.T + centre
        draw.polygon(xy.ravel().tolist(), fill=255 if add else 0)
    return np.asarray(img) > 0


def _texture(rng: np.random.Generator, cls: int, xs: np.ndarray, ys: np.ndarray, a: np.ndarray,
             k: int) -> np.ndarray:
    """(N, 3) colours at pixels (xs, ys): solid ``a``, or stripes / dots / a gradient between ``a`` and a
    darker shade of it (so the main colour stays the object's colour). The class prefers one texture."""
    if rng.random() < P_TEXTURE:
        kind = (cls - 1) % len(TEXTURES)
    else:
        kind = int(rng.integers(len(TEXTURES)))
    if TEXTURES[kind] == "solid":
        return np.broadcast_to(a, (len(xs), 3))
    b = a * rng.uniform(0.35, 0.65)
    theta = rng.uniform(0, np.pi)
    u = xs * np.cos(theta) + ys * np.sin(theta)  # coordinates along / across the pattern
    v = ys * np.cos(theta) - xs * np.sin(theta)
    period = rng.uniform(3, 8) * k
    if TEXTURES[kind] == "stripes":
        w = (u % period) < period * rng.uniform(0.35, 0.65)
    elif TEXTURES[kind] == "dots":  # dots of the dark shade on a rotated square lattice
        w = np.hypot(u % period - period / 2, v % period - period / 2) >= period * rng.uniform(0.2, 0.35)
    else:  # linear gradient across the object
        w = (u - u.min()) / max(np.ptp(u), 1.0)
    return b + (a - b) * w[:, None]


def _scene_classes(rng: np.random.Generator) -> list[int]:
    """The classes of one scene's objects, in paint order: 1-3 distinct classes (VOC's mix), some twice."""
    n = rng.choice(len(N_CLASSES_P), p=N_CLASSES_P) + 1
    classes = rng.choice(np.arange(1, len(CLASSES)), size=n, replace=False)
    objects = [int(c) for c in classes for _ in range(2 if rng.random() < P_SECOND_INSTANCE else 1)]
    return [objects[i] for i in rng.permutation(len(objects))]


def _majority(labels: np.ndarray, size: int, k: int) -> np.ndarray:
    """(size*k, size*k) labels -> (size, size): the most frequent label in each k x k block."""
    blocks = labels.reshape(size, k, size, k).transpose(0, 2, 1, 3).reshape(size * size, k * k)
    n = len(CLASSES)
    keys = np.arange(size * size)[:, None] * n + blocks
    counts = np.bincount(keys.ravel(), minlength=size * size * n).reshape(size * size, n)
    return counts.argmax(1).astype(np.uint8).reshape(size, size)


def _void_boundaries(labels: np.ndarray) -> np.ndarray:
    """Set to VOID every pixel whose right, lower, lower-left or lower-right neighbour holds another label.

    Every pair of 8-adjacent pixels with different labels then has a void member: a one-pixel band, the
    share of the image that VOC's five-pixel band takes at 500 px (image edges do not count).
    """
    h, w = labels.shape
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        edge |= padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != labels
    return np.where(edge, VOID, labels).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (size, size, 3) uint8 RGB image and (size, size) uint8 mask (class ids, 255 void).

    Deterministic and free of I/O: the output depends only on the RNG state (which it advances) and ``size``.
    """
    k = _supersample(size)
    hi = size * k
    canvas = np.array(_background(rng, hi, k))  # (hi, hi, 3) uint8
    labels = np.zeros((hi, hi), np.uint8)  # class per canvas pixel, follows paint order
    instance = np.zeros((hi, hi), np.int32)  # 0 = none, i = i-th painted object
    full = np.zeros(1, np.int64)  # (n + 1,) area of each instance when painted (0: unused)
    visible = np.zeros(1, np.int64)  # (n + 1,) its area still visible now
    objects = _scene_classes(rng)
    scale = len(objects) ** -0.4  # several objects are smaller, so that they fit side by side
    for cls in objects:
        for _ in range(10):  # re-place until every earlier object keeps >= 40% of its area
            mask = _object_mask(rng, CLASSES[cls], hi, scale)
            covered = np.bincount(instance[mask], minlength=len(full))
            if np.all(visible[1:] - covered[1:] >= 0.4 * full[1:]):
                break
        else:
            continue  # no room for this object: the scene holds one object fewer
        ys, xs = np.nonzero(mask)
        a = _object_colour(rng, cls, canvas[ys, xs].mean(0))
        canvas[ys, xs] = np.rint(_texture(rng, cls, xs.astype(np.float32), ys.astype(np.float32), a, k))
        labels[mask] = cls
        visible = np.append(visible - covered, len(xs))
        full = np.append(full, len(xs))
        instance[mask] = len(full) - 1
    image = np.asarray(Image.fromarray(canvas).reduce(k), np.float32)  # k x k box average
    image += rng.normal(0, 3, image.shape)  # mild sensor noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, _void_boundaries(_majority(labels, size, k))


# ---- writing the VOC-aug tree ---------------------------------------------------------------------------

def _params(seed: int, n_train: int, n_val: int, size: int) -> dict:
    return {"format_version": FORMAT_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val, "size": size}


def _image_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _write_one(job: tuple[str, str, int, int, int]) -> None:
    root, split, index, seed, size = job
    image, mask = render_scene(np.random.default_rng([seed, SPLITS[split][0], index]), size)
    name = _image_id(split, index)
    # 4:4:4 chroma keeps colour edges on the mask's boundaries
    Image.fromarray(image).save(f"{root}/JPEGImages/{name}.jpg", quality=JPEG_QUALITY, subsampling=0)
    Image.fromarray(mask).save(f"{root}/SegmentationClassAug/{name}.png")


def default_root(cache_dir: str | Path, *, seed: int = 0, n_train: int = 1500, n_val: int = 300,
                 size: int = 64) -> Path:
    """Where the benchmark with these parameters lives under ``cache_dir`` (the path names them all)."""
    return Path(cache_dir) / "synthetic" / f"v{FORMAT_VERSION}-seed{seed}-n{n_train}-{n_val}-s{size}"


def generate(root: str | Path, *, seed: int = 0, n_train: int = 1500, n_val: int = 300, size: int = 64,
             workers: int = 1, progress: bool = True) -> Path:
    """Write the benchmark to ``root``, which must be absent or empty (see ``ensure`` to reuse one)."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} already exists and is not empty; use ensure() to reuse it, "
                        "or delete it to regenerate")
    return _build(root, _params(seed, n_train, n_val, size), workers, progress)


def ensure(root: str | Path, *, seed: int = 0, n_train: int = 1500, n_val: int = 300, size: int = 64,
           workers: int = 1, progress: bool = True) -> Path:
    """Return ``root`` if it holds the benchmark with these parameters, generating it when absent.

    Raises ``SyntheticMismatchError`` (a ``ValueError``) if ``root`` holds one made with other parameters.
    """
    root = Path(root)
    params = _params(seed, n_train, n_val, size)
    if _holds(root, params):
        return root
    return _build(root, params, workers, progress)


def _holds(root: Path, params: dict) -> bool:
    """True if ``root`` holds the benchmark made with ``params``, False if absent or empty; else raise."""
    if not root.exists() or not any(root.iterdir()):
        return False
    if not (root / "meta.json").exists():
        raise DataError(f"{root} is not empty but holds no synthetic benchmark (no meta.json); "
                        "choose another root or delete it")
    meta = json.loads((root / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise SyntheticMismatchError(
            f"synthetic data at {root} is format {meta.get('format_version')}, made by another wilss version; "
            f"this one draws format {FORMAT_VERSION} (another world: objects, sizes, colours differ), so "
            f"results on the two do not compare: delete {root} to regenerate it, or leave data.root empty "
            "to use the default folder of this format")
    diff = [f"{key}={meta.get(key)!r} (requested {value!r})" for key, value in params.items()
            if meta.get(key) != value]
    if diff:
        raise SyntheticMismatchError(
            f"synthetic data at {root} was generated with other parameters: {', '.join(diff)}; choose "
            f"another root (default_root() names one per parameter set) or delete {root} to regenerate")
    return True


def _build(root: Path, params: dict, workers: int, progress: bool) -> Path:
    """Write the tree into a temporary sibling of ``root``, then rename it into place.

    A killed run leaves only a ``.<name>.tmp-<pid>`` sibling behind, never a half-written ``root``. If
    another process renamed its tree into place meanwhile, that (identical) tree is kept and ours dropped.
    """
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier process that had our pid
    for sub in ("JPEGImages", "SegmentationClassAug"):
        (tmp / sub).mkdir(parents=True)
    counts = {"train": params["n_train"], "val": params["n_val"]}
    jobs = [(str(tmp), split, i, params["seed"], params["size"]) for split, n in counts.items()
            for i in range(n)]
    with tqdm(total=len(jobs), desc=f"synthetic data -> {root.name}", disable=not progress) as bar:
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                    bar.update()
        else:
            for job in jobs:
                _write_one(job)
                bar.update()
    for split, n in counts.items():
        ids = [_image_id(split, i) for i in range(n)]
        lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids)
        (tmp / SPLITS[split][1]).write_text(lines)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    meta = {**params, "classes": list(CLASSES), "jpeg_quality": JPEG_QUALITY}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if root.exists() and not any(root.iterdir()):
        root.rmdir()  # an empty placeholder: renaming onto it is not portable
    try:
        os.rename(tmp, root)
    except OSError:
        if not (root / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
        _holds(root, params)  # its tree must have our parameters
    return root
