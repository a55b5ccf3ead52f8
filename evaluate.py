"""Step 7: accuracy tables, wherever ground truth exists.

    python evaluate.py --dataset datasets/demo --preset demo

Localization recall at (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) per condition, for the student's
retrieval and the oracle's; retrieval P@K / Recall@K for held-out database anchors and queries.
Writes outputs/<name>/evaluation.json and evaluation.md. Details in mmcrossvit/steps/evaluate.py.
"""
from mmcrossvit import cli
from mmcrossvit.steps import evaluate as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
