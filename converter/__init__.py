"""vmae-convert: official PyTorch VideoMAE checkpoints -> Keras 3 / TensorFlow, proven equal.

Importing this package loads neither torch nor tensorflow; the modules that need them
go through `converter.frameworks`, which imports them in the one order that is safe.
"""
__version__ = "0.1.0"
