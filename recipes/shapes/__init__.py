"""The training recipe of the embedded `shapes` model, runnable from a checkout and not part of the wheel:

    python -m recipes.shapes.train --out weights/shapes --seed 0 --minutes 110

`train` runs the stages in order; `bpe` learns the tokenizer, `train_clip` the CLIP towers and the prior,
`train_diffusion` the decoder and the super-resolution stage; `train_data` draws their batches from the shapes
world (`dalle_cli.shapes.world`), `train_common` holds what the stages share, and `train_export` the architecture
and the files it is written as.
"""
