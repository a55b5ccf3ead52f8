"""A synthetic town with exact geometry: a small, offline stand-in for Aachen Day-Night.

The town is a grid of blocks of box-shaped buildings separated by streets. World frame: metres,
z up, ground plane z = 0, open sky. Every vertical facade is a textured rectangle and the ground
is a textured plane; images are ray-cast per pixel through the exact camera model (pycolmap's
SIMPLE_RADIAL, pixel centres at +0.5), so poses, intrinsics and depth maps are ground truth.

Rendering, per pixel: the ray of the (undistorted) normalized coordinate is intersected with the
ground and with every facade whose projection covers the pixel (nearest hit wins); the hit's
texture coordinate indexes mip-mapped texture atlases (unique per facade: colour, windows, shops,
signs, graffiti, stains) multiplied by a shared high-frequency detail layer (plaster grain,
bricks, ashlar, paving setts). Images are rendered at `supersample` x the output size and reduced
with INTER_AREA. Day images use a sun + sky model; night images use dark ambient light, wall-mounted
street lamps (coloured point lights with 1/d^2 falloff evaluated at each pixel's 3D hit point),
emissive lit windows and shop signs, lamp glow, sensor noise and blur (`night_shade`, reusable
through `gbuffer_from_image` on any image with a depth map).

Dataset output follows Aachen's layout (mmcrossvit.layout):
    <out>/images/images_upright/db/0000.jpg ...
    <out>/images/images_upright/db/0000_cyclegan.jpg ...   with night_db: the database view at night
    <out>/images/images_upright/query/day/synth/day_0000.jpg ...
    <out>/images/images_upright/query/night/synth/night_0000.jpg ...
    + NVM / reference model / query lists / ground-truth poses, contact_sheet.png, scene.json

    python -m datasets.synthetic_town --preset tiny --out datasets/tiny

The `_cyclegan` files stand in for the authors' CycleGAN night versions of the database images,
which training pairs with day images (mmcrossvit.data.cyclegan_path); they are rendered by the
night renderer at `night_db_scale` times the resolution, are not database images (no pose in the
NVM / reference model, so no features, SfM or retrieval), and `render_night_database` adds them to
an already generated dataset without touching its other images.

Modules, in pipeline order: params (parameter help; values in mmcrossvit/presets.py), textures and
facade (procedural textures), town (plan and ground), scene (facades, lamps, atlases), lens (the
camera model, pycolmap), trace (ray casting), render (shading and development), cameras (where
the views go), generate (the dataset), __main__ (the command line).
"""
from .cameras import db_camera, plan_cameras, query_camera, rotation_from_angles, sample_view, street_segments
from .generate import (GENERATOR_VERSION, OWNED, contact_sheet, generate, night_db_camera, night_db_name,
                       render_night_database)
from .lens import Rays, camera_rays, distort, undistort
from .params import NON_CONTENT, PARAM_HELP, scene_params, scene_presets
from .render import GBuffer, develop, gbuffer, gbuffer_from_image, night_shade, render, shade_day, to_night
from .scene import Facades, Lamps, Scene, build_scene
from .town import Layout
from .trace import GROUND, NEAR, SKY, trace

__all__ = ["GBuffer", "GENERATOR_VERSION", "GROUND", "Facades", "Lamps", "Layout", "NEAR", "NON_CONTENT", "OWNED",
           "PARAM_HELP", "Rays", "SKY", "Scene", "build_scene", "camera_rays", "contact_sheet", "db_camera",
           "develop", "distort", "gbuffer", "gbuffer_from_image", "generate", "night_db_camera", "night_db_name",
           "night_shade", "plan_cameras", "query_camera", "render", "render_night_database", "rotation_from_angles",
           "sample_view", "scene_params", "scene_presets", "shade_day", "street_segments", "to_night", "trace",
           "undistort"]
