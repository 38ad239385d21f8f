"""Networks: the study U-Net and its losses, and external baselines."""
