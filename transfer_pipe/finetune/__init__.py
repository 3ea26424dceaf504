"""Fine-tuning: model surgery (heads, freeze policies, per-depth learning rates, LP-FT),
training images, the training loop with checkpoints, and saved fine-tuned models."""
