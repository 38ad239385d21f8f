"""The rotation-robustness study of Fok et al. 2024 (chapters 04-07): model sets, α groups, tables."""
