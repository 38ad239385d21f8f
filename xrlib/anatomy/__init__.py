"""Anatomy from CT: clavicle annotation and the virtual cohort (seeded anatomical deformations)."""
