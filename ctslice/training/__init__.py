"""Training the diffusion model: ``trainer`` (the loop, top to bottom) and ``session`` (everything built
before the first step, in named steps); start reading at ``trainer.train``.

The rest: ``latents`` (the latent cache), ``optim`` (AdamW and the learning-rate schedule), ``state``
(RNG states and when checkpoints are written), ``run_log`` (``log.jsonl`` and TensorBoard),
``validation``, ``progress_figure`` (``progress.png``), ``distributed`` (DDP). Nothing is imported
here, so that ``import ctslice.training.latents`` stays light.
"""
