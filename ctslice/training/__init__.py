"""Training the denoising U-Net: ``trainer.train`` runs a ``session.prepare``d run step by step."""
