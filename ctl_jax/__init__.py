"""ctl-jax: Complete The Look in JAX/Flax.

task.py is the interface between the trainer core (trainer/) and the tasks (scene/, product/);
nn/ holds the network parts both tasks share, serving/ what a trained model does afterwards.
"""
