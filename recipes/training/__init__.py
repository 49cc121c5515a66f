"""Training-side library of the MiniMinds recipes: argument classes, the trainer mixin and its callbacks,
checkpoints, model loading and saving, the command line, and each stage's training function. No module here is a
script; the stage scripts in `recipes/` are thin wrappers over these."""
