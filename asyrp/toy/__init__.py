"""The toy world: procedural shapes, a small DDPM and CLIP trained by this project, an exact oracle.

Everything here runs offline on a CPU in minutes, and all of it lives in this package:

- `asyrp.toy.generator`: `FACTORS`, `shape_factors`, `render_shapes` (numpy only): every factor known.
- `asyrp.toy.data`: `TOY_SEED_BASE` (the datasets' generator seeds, away from the models' training seeds),
  `factors_from_rows`; ``prepare_dataset("toy", ...)`` of `asyrp.data.datasets` writes a toy dataset.
- `asyrp.toy.models`: `TOY_UNET_CONFIG`, `load_toy_unet`, `load_toy_clip`, the shipped-weight paths; the
  built-in ids `offline:toy` and `offline:toy-clip` (`asyrp.models.offline` names them, by string).
- `asyrp.toy.clip_model`: the toy CLIP's architecture (`TOY_CLIP_CONFIG`) and word-level tokenizer.
- `asyrp/toy/assets/`: the shipped weights, `ddpm.safetensors` and `clip.safetensors` (fp16).
- `asyrp.toy.train_ddpm`, `asyrp.toy.train_clip`: the trainers (`python -m asyrp.toy.train_ddpm`).
- `asyrp.toy.oracle`: exact readout of shape, colour, size, background and mask from an image.
- `asyrp.toy.evaluate`, `asyrp.toy.analysis`: oracle metrics of edits and the Sec. 5.3 measurements.

The pipeline's side is `pipeline/toy.py` (the oracle's verdict, written by stage `evaluate@`) and stage
`toy_analysis`. Imports point one way: this package imports `asyrp.models`; `asyrp.models` never imports it
(the built-ins are named by string), and `asyrp.data.datasets` imports only the generator and `TOY_SEED_BASE`.
"""
