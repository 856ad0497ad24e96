"""The shapes world: nativerl's embedded default world.

Scenes of coloured shapes on a 4x4 grid (`world`), GenEval-style prompts with a train / held-out split
(`prompts`), a k-means VQ image tokenizer (`vq_tokenizer`), a PCA patch autoencoder for the renderer
(`patch_autoencoder`), the small BLIP3o-NEXT-shaped generator built from them (`model`), the committed
pre-trained checkpoint (`pretrained/`) and the held-out GenEval evaluation (`evaluate`).
"""
