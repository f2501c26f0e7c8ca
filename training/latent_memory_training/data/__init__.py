"""Data: the synthetic world (photos, scenes, renderer), its exports, and the sequence record.

Import the submodules directly (``from latent_memory_training.data import generate``);
nothing here imports torch.
"""
