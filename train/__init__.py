"""Training: demo readers, chunk data sets, the fine-tuning loop, checkpoints."""
