"""The scene parameters: what each one means, which ones change the content, and their preset
values, which live in the project's one preset table (mmcrossvit.presets, the `generate` step)."""
from __future__ import annotations

from mmcrossvit.presets import PRESETS

# Also the canonical parameter order (CLI flags, scene.json).
PARAM_HELP = {
    "num_db": "number of database images (spread evenly along the inner streets)",
    "num_day": "number of day queries (novel positions, headings, pitch and focal lengths)",
    "num_night": "number of night queries (same sampling as day, rendered at night)",
    "night_db": "also render every database view at night, as <stem>_cyclegan.jpg beside it (the night "
                "versions of the database images that training pairs with day images; never a database image)",
    "night_db_scale": "resolution of the night database renderings as a fraction of width x height "
                      "(intrinsics scaled; training reads them at 120-240 px)",
    "width": "image width in pixels (portrait queries swap width and height)",
    "height": "image height in pixels",
    "supersample": "render at this many times the output size per axis, then reduce (anti-aliasing)",
    "blocks_x": "number of building blocks along x",
    "blocks_y": "number of building blocks along y",
    "block_size": "side of a square block in metres",
    "street_width": "street width in metres (wall to wall, sidewalks included)",
    "min_height": "lowest building height in metres",
    "max_height": "highest building height in metres",
    "num_styles": "number of architectural styles shared by buildings (fewer = more perceptual aliasing)",
    "facade_ppm": "texture resolution of street facades in pixels per metre (side walls get half)",
    "ground_ppm": "texture resolution of the ground in pixels per metre",
    "detail_ppm": "resolution of the shared high-frequency detail layer in pixels per metre",
    "detail_tile": "side in pixels of the (periodic) detail layer tile; its period is tile/ppm metres",
    "query_focal_min": "smallest query focal length in units of image width",
    "query_focal_max": "largest query focal length in units of image width",
    "max_distortion": "queries draw the SIMPLE_RADIAL k uniformly from [-this, this]; database k = 0",
    "portrait_fraction": "fraction of queries taken in portrait orientation",
    "jpeg_quality": "JPEG quality of the written images",
    "workers": "rendering threads (results do not depend on it)",
}
# Parameters that only change how the files are produced, not what they contain.
NON_CONTENT = {"workers"}


def scene_presets() -> dict[str, dict]:
    """{preset: scene parameters} of the presets that have a synthetic scene."""
    return {name: steps["generate"] for name, steps in PRESETS.items() if steps["generate"] is not None}


def scene_params(preset: str, overrides: dict | None = None) -> dict:
    """The preset's scene parameters with `overrides` (None values ignored), in PARAM_HELP order."""
    presets = scene_presets()
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    base = presets[preset]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(base)}")
    cfg = {**base, **overrides}
    return {**{k: cfg[k] for k in PARAM_HELP if k in cfg}, **cfg}
