"""Training: the shared loop, checkpoints, progress, and the finetune and pretrain tasks."""
