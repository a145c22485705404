"""TensorFlow: checkpoints (``checkpoint``, plugin ``tf``) and Keras/HF h5 files (``h5``, plugin ``h5``).

``names`` (TF ⇄ PyTorch name and layout rules) and ``index`` (the checkpoint index table) are the
two plugins' shared library, not plugins themselves.
"""
