"""Pretrained networks: diffusion U-Nets (hub ids, checkpoint files, built-in ``offline:*`` ids), CLIP, LPIPS, segmenters."""
