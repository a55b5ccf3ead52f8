"""Step 5: retrieval pairs from the distilled student's global descriptors.

    python generate_localization_pairs.py --dataset datasets/demo --preset demo

Student descriptors of database and query images (cached in outputs/<name>/descriptors.h5),
exact inner-product ranking, and hloc-format pairs: outputs/<name>/pairs-query.txt (top-K
database images per query), pairs-db-retrieval.txt and retrieval.npz (for the evaluation tables).
"""
from mmcrossvit import cli
from mmcrossvit.steps import pairs as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
