"""The method: DDIM, the h-space split, directions f_t, losses, training, editing, the LPIPS schedule."""
