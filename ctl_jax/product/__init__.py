"""Product-based Complete The Look (Li et al., KDD 2020): model, losses, steps, evaluation and
the task the trainer runs."""
