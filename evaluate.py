"""Step 7: accuracy tables, wherever ground truth exists.

    python evaluate.py --dataset datasets/demo --preset demo
    python evaluate.py --dataset datasets/demo --results hloc=outputs/hloc/results.txt

Localization recall at (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) per condition, for the student's
retrieval and the oracle's, and of any results file named with --results (hloc's, ...);
retrieval P@K / Recall@K for held-out database anchors and queries. Queries missing from a
results file count as failures and are reported; an empty or absent file is an error.
Writes outputs/<name>/evaluation.json and evaluation.md. Details in mmcrossvit/steps/evaluate.py.
"""
from mmcrossvit import cli
from mmcrossvit.steps import evaluate as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
