"""Experiments beside the product: distillation, ensembles, ablation recipes and the release step
that ships a run as the package's pretrained model. Run from the repository root
(python -m experiments.NAME --help); not installed with the package."""
