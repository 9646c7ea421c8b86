"""vesselseg: retinal vessel segmentation with a U-Net on TensorFlow/Keras."""
__version__ = "0.1.0"
