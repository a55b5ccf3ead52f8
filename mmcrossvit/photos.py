"""A folder of one's own photographs: which files are usable images, and each one's camera.

`scan` walks a folder (sorted, recursively) and sorts every file into a usable photo with its
camera, or a skipped file with the reason (not an image, empty, unreadable). The camera is the
one COLMAP infers from the file (`pycolmap.infer_camera_from_image`): the focal length from the
EXIF focal length and sensor size where present ("exif"), else `default_focal_factor` times the
longer side ("default", the guess that SfM or the pose solver then refines).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .colmap_io import CameraSpec
from .layout import IMAGE_EXTS

DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's own default: focal = 1.2 x the longer side (a ~45° field of view)
CAMERA_MODEL = "SIMPLE_RADIAL"  # one focal, principal point, one radial term: refinable from few images


@dataclass(frozen=True)
class Photo:
    name: str            # path relative to the folder, with '/' separators
    path: Path
    camera: CameraSpec
    focal_source: str    # "exif" or "default"
    device: str | None = None  # EXIF make, model, focal length and the image size: photos of one camera share it


def device_of(path: Path, width: int, height: int) -> str | None:
    """What identifies the camera and zoom a photo was taken with (its EXIF), or None without EXIF.
    Photos that share it share their intrinsics, so a query can take the map's refined camera."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769)
    except OSError:
        return None
    make, model = (str(exif.get(t, "")).strip("\x00 ") for t in (0x010F, 0x0110))
    focal, f35 = sub.get(0x920A), sub.get(0xA405)
    if not (make or model) or (focal is None and f35 is None):
        return None
    return f"{make} {model}, f {float(focal or 0):g} mm ({f35 or '?'} mm equiv.), {width}x{height}"


def infer_camera(path: Path, default_focal_factor: float = DEFAULT_FOCAL_FACTOR) -> tuple[CameraSpec, str]:
    import pycolmap
    opts = pycolmap.ImageReaderOptions()
    opts.camera_model = CAMERA_MODEL
    opts.default_focal_length_factor = default_focal_factor
    cam = pycolmap.infer_camera_from_image(str(path), opts)
    return CameraSpec.from_pycolmap(cam), ("exif" if cam.has_prior_focal_length else "default")


def _unusable(path: Path) -> str | None:
    """Why a file is no usable photograph, or None."""
    if path.suffix.lower() not in IMAGE_EXTS:
        return f"not an image file (suffix {path.suffix or 'none'!r}; expected one of {', '.join(sorted(IMAGE_EXTS))})"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable; decode it for real
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return f"not a readable image ({type(e).__name__}: {str(e).strip() or 'truncated'})"
    return None


def scan(folder: str | Path, default_focal_factor: float = DEFAULT_FOCAL_FACTOR,
         progress: bool = True) -> tuple[list[Photo], dict[str, str]]:
    """(photos, skipped): the folder's usable photographs with their cameras, by name, and every
    other file with the reason it was left out."""
    from tqdm import tqdm
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts[:-1]))
    photos, skipped = [], {}
    for p in tqdm(files, desc="photos", unit="file", disable=not progress):
        name = p.relative_to(folder).as_posix()
        why = _unusable(p)
        if why:
            skipped[name] = why
            continue
        cam, source = infer_camera(p, default_focal_factor)
        photos.append(Photo(name, p, cam, source, device_of(p, cam.width, cam.height) if source == "exif" else None))
    return photos, skipped
