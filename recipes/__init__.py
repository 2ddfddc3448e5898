"""Training recipes: the code that trains the models dalle ships, runnable from a checkout (`python -m
recipes.<model>.train ...`). They import the inference code from `dalle_cli` and are not part of the wheel, so a
user's install holds no training code."""
