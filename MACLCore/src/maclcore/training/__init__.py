"""Training: the one loop both tasks share, the run session (lock, resume, checkpoints, stop), the time
budget and the plan line, the weight average, transfer of pretrained weights, and the finetune and pretrain
tasks."""
