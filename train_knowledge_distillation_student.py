"""Step 4: distil the multi-modal teacher into the image-only student (Gaussian-kernel embedding transfer).

    python train_knowledge_distillation_student.py --dataset datasets/demo --preset demo
    torchrun --nproc_per_node 4 train_knowledge_distillation_student.py --dataset datasets/aachen --preset paper

The frozen teacher (outputs/<name>/teacher/best.pt, or --teacher) embeds every clean database
image with its 3D tokens once; the student sees only the image (made night with probability
--night-prob) and learns the teacher's similarity structure with the relaxed contrastive loss
of Kim et al. (CVPR 2021). The method is described in mmcrossvit/steps/student.py.

Writes outputs/<name>/student/ (or --out): last.pt and best.pt (format in
mmcrossvit/train/checkpoint.py), tb/ (TensorBoard) and summary.json.
--resume continues an interrupted run; --stop-after N stops after N epochs with a checkpoint.
"""
from mmcrossvit import cli
from mmcrossvit.steps import student as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
