"""Shared code of the Multi-modal CrossViT visual-localization pipeline.

Modules: `layout` (dataset folders), `colmap_io` (NVM / COLMAP / text formats), `geometry`
(poses, errors, boxes), `storage` (atomic writes, safe array files), `errors` (the error type
every reader raises).
"""
