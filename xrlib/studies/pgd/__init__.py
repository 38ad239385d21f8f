"""Chapter 09: PGD/SegPGD attacks on the study models, input-attack defenses, OOD attack and detection.

``settings`` (the profile's ``pgd:`` block), ``study`` (defenses, attack grid, worst case, masking
checks, curves), ``ood`` (reconstruction head, OOD images and attacks, AUROC), ``paper`` (paper
002's Table 3), ``headline`` (``<run>/pgd/headline.md``).
"""
