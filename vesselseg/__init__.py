"""vesselseg: retinal vessel segmentation with a U-Net on TensorFlow/Keras.

    from vesselseg import Segmenter
    prediction = Segmenter.pretrained().predict(image)   # .probability, .mask at native size
"""
__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import vesselseg` (and the preprocess command) stays light.
    if name == "Segmenter":
        from .inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'vesselseg' has no attribute {name!r}")
