"""Using a trained run: re-evaluating its checkpoint (``evaluate``), post-hoc classifiers
(``posthoc``), and inference without the training data (``inference``: ``load_run``, predict,
export)."""
