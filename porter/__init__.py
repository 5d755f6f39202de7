"""porter: reviewed, reproducible ports of CUDA PyTorch TTS models to Ascend NPUs."""

__version__ = "0.1.0"
