"""Training: the stage pipeline (reused as stage1/stage2/stage3) and the augmentation preview."""
