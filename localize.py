"""Step 6: PnP-RANSAC localization of every query, and the benchmark's results file.

    python localize.py --dataset datasets/demo --preset demo
    python localize.py --dataset datasets/demo --preset demo --retrieval oracle   # the ceiling

SIFT matches of each query against its retrieved database images, 2D-3D correspondences through
the triangulated model, PnP-RANSAC -> outputs/<name>/Pose_Estimation_Results.txt (the Visual
Localization Benchmark's format) and localization_log.jsonl. Details in mmcrossvit/steps/localize.py.
"""
from mmcrossvit import cli
from mmcrossvit.steps import localize as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
