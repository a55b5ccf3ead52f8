"""Step 1: reference SfM and the spatial-contrastive database.

    python preprocessing.py --dataset datasets/demo --preset demo

SIFT features -> outputs/<name>/features.h5; database pairs -> pairs-db.txt; matching,
verification against the known poses and triangulation -> outputs/<name>/sfm/ (COLMAP text
model); the spatial-contrastive database (positives sharing >= N 3D points, with their 3D-box
IoU; k-fold split) -> DataBase/<name>/. Details in mmcrossvit/steps/preprocess.py.
"""
from mmcrossvit import cli
from mmcrossvit.steps import preprocess as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
