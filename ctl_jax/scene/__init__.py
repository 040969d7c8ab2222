"""Scene-based Complete The Look (Kang et al., CVPR 2019): model, distances, losses, steps,
evaluation and the task the trainer runs."""
