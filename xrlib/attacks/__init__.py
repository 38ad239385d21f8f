"""Threats to a segmentation model: each turns test images into threatened ones at a budget."""
