"""Step 3: train the multi-modal CrossViT teacher by spatial contrastive learning.

    python train_multimodal_crossvit_teacher.py --dataset datasets/demo --preset demo
    torchrun --nproc_per_node 4 train_multimodal_crossvit_teacher.py --dataset datasets/aachen --preset paper
    python train_multimodal_crossvit_teacher.py --dataset datasets/demo --preset demo --image-only   # ablation

The teacher sees each database image with its 3D spatial tokens (generate_RoPE_embeddings.py);
pairs of an anchor and a positive (label = 3D-box IoU) or a (hard) negative are trained with the
soft-label contrastive loss. The method is described in mmcrossvit/steps/teacher.py. --image-only
trains the image-only CrossViT with the same pairs, loss and budget, in outputs/<name>/image_only/.

Writes outputs/<name>/teacher/ (or --out): last.pt and best.pt (best validation Recall@1, ties by
Recall@5; format in mmcrossvit/train/checkpoint.py), tb/ (TensorBoard) and summary.json.
--resume continues an interrupted run; --stop-after N stops after N epochs with a checkpoint.
"""
from mmcrossvit import cli
from mmcrossvit.steps import teacher as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
