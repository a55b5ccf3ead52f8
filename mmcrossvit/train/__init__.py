"""Training machinery shared by the teacher and student steps, one job per module.

    distributed  devices, torchrun process groups, DDP wrapping, mixed precision
    rng          derived per-purpose random generators; global RNG capture for checkpoints
    optim        optimiser, learning-rate schedule, one optimiser step, weight initialisation
    data         spatial-DB folds, spatial tokens, the resized-image cache, the per-rank loader
    checkpoint   training checkpoints (format, save, load, resume)
    weights      model weights into a model: checkpoints, safetensors, timm's and the packaged ImageNet weights
    validation   held-out Recall@K / P@K and best-model tracking
    negatives    the teacher's negative sampling (hard / authors / uniform)
    tblog        TensorBoard scalars and summary.json
    flags        the command-line flags both trainers take
    loop         the one epoch loop: `start` a session, `fit` a `Task`

The steps (mmcrossvit/steps/teacher.py, student.py) keep only what differs between them.
"""
