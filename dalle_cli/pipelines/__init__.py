"""Where components meet: loading a model folder and running text-to-image and image variations."""
