"""The toy world: procedural shapes, a small DDPM and CLIP trained by this project, an exact oracle.

Everything here runs offline on a CPU in minutes. The generator is `asyrp.data.shape_factors` /
`render_shapes`; the shipped weights live in `asyrp/toy/assets/` (fp16 safetensors):

- `asyrp.toy.models`: `TOY_UNET_CONFIG`, `load_toy_unet`, `TOY_CLIP_CONFIG`, `load_toy_clip`
  (built-in ids `offline:toy` and `offline:toy-clip` of `asyrp.models` / `asyrp.models.clip`).
- `asyrp.toy.oracle`: exact readout of shape, colour, size, background and mask from an image.
- `asyrp.toy.train_ddpm`, `asyrp.toy.train_clip`: the trainers (`python -m asyrp.toy.train_ddpm`).
- `asyrp.toy.evaluate`, `asyrp.toy.analysis`: oracle metrics of edits and the Sec. 5.3 measurements.
"""
