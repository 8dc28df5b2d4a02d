"""The DVC pipeline on top of the model library: params, data, batching, training, evaluation, the processes of a
multi-process stage, and what the stage scripts in `stages/` share. The library never imports it."""
