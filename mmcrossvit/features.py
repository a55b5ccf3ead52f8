"""SIFT local features (COLMAP's extractor through pycolmap) and descriptor matching.

Features live in one HDF5 file, a group per image name (hloc's layout):
  keypoints    (N, 2) float32, COLMAP pixel convention (top-left pixel centre at 0.5, 0.5),
               in the original image's resolution
  scales       (N,)   float32
  descriptors  (N, 128) uint8 (COLMAP's quantised RootSIFT)
A group is complete once its attribute `done` is set, so an interrupted extraction resumes.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from .errors import DataError
from .images import read_image

log = logging.getLogger(__name__)


@dataclass
class SiftConfig:
    max_image_size: int = 1600      # longer side; larger images are downscaled before extraction
    max_num_features: int = 8192
    first_octave: int = -1          # -1 upsamples once (COLMAP default); 0 is ~10x faster
    peak_threshold: float = 0.02 / 3
    num_threads: int = -1
    contrast: str = "none"          # "clahe": local histogram equalisation before extraction
    affine_shape: bool = False      # affine-adapted regions (COLMAP's estimate_affine_shape; CPU only)
    domain_size_pooling: bool = False  # DSP-SIFT descriptors (CPU only, ~2.7x slower)

    def __post_init__(self):
        if self.contrast not in ("none", "clahe"):
            raise ValueError(f"unknown contrast normalisation {self.contrast!r} (none, clahe)")

    @classmethod
    def of(cls, settings: dict) -> "SiftConfig":
        """From a preset's or a run's preprocessing settings (the fields it has)."""
        return cls(**{f: settings[f] for f in cls.__dataclass_fields__ if f in settings and f != "num_threads"})

    @property
    def cpu_only(self) -> bool:
        return self.affine_shape or self.domain_size_pooling

    def to_json(self) -> str:
        """The settings as recorded with each image; options left off are omitted, so files
        extracted before they existed stay valid."""
        d = asdict(self)
        for k in ("affine_shape", "domain_size_pooling"):
            if not d[k]:
                del d[k]
        return json.dumps(d)

    def pycolmap_options(self):
        import pycolmap
        o = pycolmap.FeatureExtractionOptions()
        o.num_threads = self.num_threads
        o.sift.max_num_features = self.max_num_features
        o.sift.first_octave = self.first_octave
        o.sift.peak_threshold = self.peak_threshold
        o.sift.estimate_affine_shape = self.affine_shape
        o.sift.domain_size_pooling = self.domain_size_pooling
        return o


class SiftExtractor:
    def __init__(self, conf: SiftConfig, device: str = "auto"):
        import pycolmap
        from .device import sift_device
        self.conf = conf
        # COLMAP's GPU extractor has neither affine shapes nor DSP
        dev = pycolmap.Device.cpu if conf.cpu_only else sift_device(device)
        self._fe = pycolmap.FeatureExtractor.create(conf.pycolmap_options(), device=dev)

    def __call__(self, gray: np.ndarray) -> dict[str, np.ndarray]:
        import pycolmap
        h, w = gray.shape
        scale = min(1.0, self.conf.max_image_size / max(h, w)) if self.conf.max_image_size > 0 else 1.0
        if scale < 1.0:
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        if self.conf.contrast == "clahe":  # the same for every image: day and night alike
            gray = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
        kp, desc = self._fe.extract_from_uint8_array(np.ascontiguousarray(gray))
        kp = pycolmap.keypoints_to_matrix(kp).astype(np.float32)
        desc = np.asarray(desc.data, dtype=np.uint8)
        if len(kp) > self.conf.max_num_features:  # extra orientations can exceed the cap
            keep = np.argsort(-kp[:, 2], kind="stable")[: self.conf.max_num_features]
            kp, desc = kp[np.sort(keep)], desc[np.sort(keep)]
        sx, sy = w / gray.shape[1], h / gray.shape[0]
        xy = kp[:, :2] * np.array([sx, sy], dtype=np.float32)  # exact for the 0.5-centred convention
        return {"keypoints": xy.reshape(-1, 2), "scales": (kp[:, 2] * sx).reshape(-1),
                "descriptors": desc.reshape(-1, 128)}


def _extract_init(image_dir: Path, conf: SiftConfig, device: str):
    return Path(image_dir), SiftExtractor(conf, device)


def _extract_one(state, name: str) -> tuple[dict, str]:
    image_dir, extractor = state
    try:
        return extractor(read_image(image_dir / name, grayscale=True)), ""
    except DataError as e:
        return {"keypoints": np.zeros((0, 2), np.float32), "scales": np.zeros(0, np.float32),
                "descriptors": np.zeros((0, 128), np.uint8)}, e.reason


def extract_features(image_dir: Path, names: list[str], out_path: Path, conf: SiftConfig,
                     overwrite: bool = False, workers: int = 1, device: str = "auto") -> dict:
    """Extract features for `names` into `out_path`, skipping images already done there with the
    same settings from the same file (size and mtime): changed settings or a replaced image
    re-extract, and images that could not be read are retried on every run.

    Unreadable images are skipped with a warning, stored with no keypoints and an `error`
    attribute, and listed in the returned summary. `workers` processes extract (0: one per core);
    this process alone writes, in the order of `names`, so the file does not depend on it.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # work in <file>.partial, renamed into place when complete: a reader never meets a half-written
    # file, and an interrupted run resumes from the partial one
    work = out_path.with_name(out_path.name + ".partial")
    if overwrite:
        for p in (out_path, work):
            p.unlink(missing_ok=True)
    _drop_if_corrupt(work)
    if out_path.exists():
        _drop_if_corrupt(out_path)
    conf_json = conf.to_json()
    current = work if work.exists() and not out_path.exists() else out_path
    why = _to_extract(current, image_dir, names, conf_json)
    if not why and current == out_path and out_path.exists():
        return {"extracted": 0, "already_done": len(names), "skipped": []}  # up to date: nothing written
    if out_path.exists():
        os.replace(out_path, work)
    try:
        summary = _extract_into(work, image_dir, names, why, conf_json, workers, device, conf)
    except OSError:
        # a failed write (disk full, file-size limit) may have left the file inconsistent: drop it,
        # freeing the space, rather than trust it on the next run
        work.unlink(missing_ok=True)
        raise
    os.replace(work, out_path)
    return summary


def _to_extract(path: Path, image_dir: Path, names: list[str], conf_json: str) -> dict[str, tuple[str, str]]:
    """{image: (why it is extracted, its file stamp)} for the images `path` lacks or holds stale."""
    from .records import stamp
    why = {}
    with (h5py.File(path, "r") if path.exists() else contextlib.nullcontext({})) as f:
        for n in names:
            p = Path(image_dir) / n
            st = stamp(p) if p.is_file() else "missing"
            if n not in f or not f[n].attrs.get("done", False):
                reason = "new"
            elif f[n].attrs.get("error", ""):
                reason = "unreadable before: retrying"
            elif f[n].attrs.get("config") != conf_json:
                reason = "SIFT settings changed"
            elif f[n].attrs.get("image_stamp") != st:
                reason = "image changed on disk"
            else:
                continue
            why[n] = (reason, st)
    return why


def _extract_into(work: Path, image_dir: Path, names: list[str], why: dict, conf_json: str, workers: int,
                  device: str, conf: SiftConfig) -> dict:
    from .parallel import mapped
    from .storage import h5_file
    skipped = []
    with h5_file(work) as f:
        todo = [n for n in names if n in why]
        counts = {}
        for r, _ in why.values():
            counts[r] = counts.get(r, 0) + 1
        again = {r: c for r, c in counts.items() if r != "new"}
        if again:
            log.info("re-extracting features: %s", ", ".join(f"{r} for {c} images" for r, c in again.items()))
        # zip takes `todo` first: with nothing to do, the workers' init never runs
        with mapped(_extract_one, todo, workers, _extract_init, (Path(image_dir), conf, device)) as results:
            _write_features(f, zip(todo, results), len(todo), image_dir, why, conf_json, skipped)
    return {"extracted": len(todo), "already_done": len(names) - len(todo), "skipped": skipped}


def _write_features(f, results, n: int, image_dir: Path, why: dict, conf_json: str, skipped: list) -> None:
    """Each image's features as a group of `f`, marked done once complete (flushed per image)."""
    for name, (feats, err) in tqdm(results, total=n, desc="SIFT", unit="img", disable=not n):
        if err:
            log.warning("skipping %s", DataError(Path(image_dir) / name, err))
            skipped.append({"image": name, "reason": err})
        if name in f:
            del f[name]
        g = f.create_group(name)
        for k, v in feats.items():
            g.create_dataset(k, data=v)
        g.attrs["error"] = err
        g.attrs["config"] = conf_json
        g.attrs["image_stamp"] = why[name][1]
        g.attrs["done"] = True
        f.flush()


def failed_images(path: Path) -> dict[str, str]:
    """{image: reason} of the images a features file recorded as unreadable."""
    out: dict[str, str] = {}
    if not Path(path).exists():
        return out
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, str(o.attrs["error"]))
                     if isinstance(o, h5py.Group) and o.attrs.get("error", "") else None)
    return out


def features_digest(path: Path, names: list[str]) -> str:
    """A fingerprint of the features of `names` (settings and source-image stamps), cheap to take."""
    from .records import digest
    with h5py.File(path, "r") as f:
        return digest([(n, str(f[n].attrs.get("config", "")), str(f[n].attrs.get("image_stamp", "")),
                        str(f[n].attrs.get("error", ""))) if n in f else (n, None) for n in names])


def _drop_if_corrupt(path: Path) -> None:
    if not path.exists():
        return
    try:
        with h5py.File(path, "r"):
            pass
    except OSError:
        log.warning("%s is unreadable (interrupted write?); starting it again", path)
        os.remove(path)


def stored_config(path: Path) -> SiftConfig | None:
    """The extraction settings recorded in a features file (None if it holds no image)."""
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda n, o: found.append(o.attrs["config"]) if isinstance(o, h5py.Group) and "config" in o.attrs and not found else None)
    return SiftConfig(**json.loads(found[0])) if found else None


def read_features(path: Path, name: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        if name not in f or not f[name].attrs.get("done", False):
            raise DataError(path, f"no features for image {name!r}; run preprocessing.py first")
        g = f[name]
        return {k: g[k][()] for k in ("keypoints", "scales", "descriptors")}


class FeatureStore:
    """Features read from a features file through a cache bounded in bytes (least recently used
    out first): localization reads each database image once per query, matching once per pair."""

    def __init__(self, path: Path, max_bytes: int = 256 << 20):
        from collections import OrderedDict
        self.path, self.max_bytes, self.bytes = Path(path), max_bytes, 0
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    @classmethod
    def of(cls, source: "Path | FeatureStore") -> "FeatureStore":
        return source if isinstance(source, FeatureStore) else cls(source)

    def __getitem__(self, name: str) -> dict[str, np.ndarray]:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        f = read_features(self.path, name)
        self._cache[name] = f
        self.bytes += sum(v.nbytes for v in f.values())
        while self.bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self.bytes -= sum(v.nbytes for v in old.values())
        return f


def feature_names(path: Path) -> set[str]:
    names: set[str] = set()
    if not Path(path).exists():
        return names
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.add(n) if isinstance(o, h5py.Group) and o.attrs.get("done", False) else None)
    return names


def match_descriptors(desc0: np.ndarray, desc1: np.ndarray, ratio: float = 0.8,
                      mutual: bool = True, device: torch.device | str | None = None,
                      kernel: str = "auto") -> np.ndarray:
    """(M, 2) indices of nearest-neighbour matches passing Lowe's ratio test (on L2 distances of
    the L2-normalised descriptors).

    The dot products of the uint8 descriptors are integers below 2**24, computed exactly (see
    `_exact_dots`), so matches do not depend on the thread count, the device or `kernel` (how the
    CPU multiplies: "int8", "float32", or "auto", see `int8_products_fast`); the normalisation is
    elementwise."""
    if len(desc0) < 2 or len(desc1) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    dev = torch.device(device or "cpu")
    d0 = torch.from_numpy(np.ascontiguousarray(desc0, dtype=np.uint8)).to(dev)
    d1 = torch.from_numpy(np.ascontiguousarray(desc1, dtype=np.uint8)).to(dev)
    sim, sq0, sq1 = _exact_dots(d0, d1, kernel)
    norm0 = sq0.float().sqrt().clamp_min(1e-12)
    norm1 = sq1.float().sqrt().clamp_min(1e-12)
    sim /= norm0[:, None] * norm1[None, :]
    top = sim.topk(2, dim=1)
    dist = torch.sqrt(torch.clamp(2 - 2 * top.values, min=0))
    ok = dist[:, 0] < ratio * dist[:, 1]
    nn01 = top.indices[:, 0]
    if mutual:  # argmax(0) of the columns that rows passing the ratio test point to (a few %)
        i0 = torch.nonzero(ok).squeeze(1)
        back = sim.index_select(1, nn01[i0]).argmax(dim=0)
        ok[i0] = back == i0
    i0 = torch.nonzero(ok).squeeze(1)
    return torch.stack([i0, nn01[i0]], 1).cpu().numpy()


KERNELS = ("auto", "int8", "float32")
# CPU instruction sets under which torch's int8 matmul beats float32 (Linux /proc/cpuinfo names)
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (Linux; empty elsewhere), read once."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_products_fast(flags: frozenset[str] | None = None) -> bool:
    """Whether `auto` multiplies descriptors in int8 on this CPU: only with VNNI or AMX. Without
    them torch's int8 matmul is a slow fallback: 18x slower than float32 on an AVX2-only AMD EPYC
    (benchmarks/results/matching_kernel_epyc.md); with VNNI it was the faster one."""
    return hasattr(torch, "_int_mm") and bool((cpu_flags() if flags is None else flags) & INT8_FLAGS)


def resolve_kernel(kernel: str = "auto") -> str:
    """The CPU product kernel that `kernel` means here: "int8" or "float32"."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    if kernel == "auto":
        return "int8" if int8_products_fast() else "float32"
    return kernel


def _exact_dots(d0: torch.Tensor, d1: torch.Tensor, kernel: str = "auto"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dot products of two uint8 descriptor sets as a float32 (CPU) or float64 (CUDA) matrix
    that holds them exactly, and each set's squared norms.

    On the CPU, `kernel` int8 multiplies x - 128 in int8 and brings the shift back in float32:
    a.b = a'.b' + 128 sum(a') + 128 sum(b') + 128^2 D, each partial sum an integer below 2**24
    and so exact; float32 multiplies directly (also exact: every partial sum is an integer below
    2**24). CUDA multiplies in float64, which TF32 never touches."""
    kernel = resolve_kernel(kernel)
    if d0.device.type == "cuda" or kernel == "float32" or not hasattr(torch, "_int_mm"):
        exact = torch.float64 if d0.device.type == "cuda" else torch.float32
        a, b = d0.to(exact), d1.to(exact)
        return a @ b.T, a.square().sum(1), b.square().sum(1)
    a = (d0.to(torch.int16) - 128).to(torch.int8)
    b = (d1.to(torch.int16) - 128).to(torch.int8)
    dots = torch._int_mm(a, b.T).float()
    dots += (128 * a.sum(1, dtype=torch.int32)).float()[:, None]
    dots += (128 * b.sum(1, dtype=torch.int32) + 128 * 128 * a.shape[1]).float()[None, :]
    d0i, d1i = d0.to(torch.int32), d1.to(torch.int32)
    return dots, (d0i * d0i).sum(1), (d1i * d1i).sum(1)


def feature_stamps(path: Path, names) -> dict[str, str]:
    """{image: what its stored features came from (settings, source-file stamp, error)}."""
    from .records import digest
    if not Path(path).exists():
        return {n: "" for n in names}
    with h5py.File(path, "r") as f:
        return {n: digest([str(f[n].attrs.get(k, "")) for k in ("config", "image_stamp", "error")]) if n in f else ""
                for n in names}
