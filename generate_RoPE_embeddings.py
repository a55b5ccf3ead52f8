"""Step 2: 3D spatial tokens ("RoPE embeddings") for every database image.

    python generate_RoPE_embeddings.py --dataset datasets/demo --preset demo

Reads outputs/<name>/sfm and writes DataBase/<name>/spatial_tokens.safetensors (tokens, valid
mask and the 3D point behind each patch; format and formula in mmcrossvit/steps/tokens.py and
mmcrossvit/spatial_tokens.py), plus a PNG of one image's patch grid coloured by 3D position.
"""
from mmcrossvit import cli
from mmcrossvit.steps import tokens as step


def main(argv=None):
    return cli.main(step, argv, __doc__)


if __name__ == "__main__":
    cli.run_cli(main)
