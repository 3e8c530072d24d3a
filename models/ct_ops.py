"""Filtered back-projection as a Keras layer, so a reconstruction model can take sinograms.

The filter matrix and back-projection tables come from data/ct/fbp.py and are
rebuilt from the layer's config (geometry only), so nothing large is stored in a
``.keras`` file and the graph exports to SavedModel and ONNX (MatMul and Gather).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from medflow.data.ct.fbp import backprojection_tables, filter_matrix, fourier_filter
from medflow.data.ct.physics import n_detectors, rebin_matrix


@keras.saving.register_keras_serializable(package="medflow")
class FilteredBackprojection(keras.layers.Layer):
    """(B, D, A) parallel-beam sinograms -> (B, S, S, 1) FBP images (scikit-image conventions).

    ``scale`` and ``offset`` map the FBP to the training images' units (1 and 0 for
    the ellipses; HU for sinograms simulated from CT volumes).
    """

    def __init__(self, size: int, angles_deg, filter_name: str = "hann", frequency_scaling: float = 1.0,
                 scale: float = 1.0, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.offset = float(scale), float(offset)  # output = scale * FBP + offset (e.g. to HU)
        self.size = int(size)
        self.angles_deg = [float(a) for a in angles_deg]
        self.filter_name = filter_name
        self.frequency_scaling = float(frequency_scaling)
        fourier_filter(64, filter_name, frequency_scaling)  # fail at construction on a bad filter

    def build(self, input_shape):
        detectors, n_angles = int(input_shape[1]), int(input_shape[2])
        if n_angles != len(self.angles_deg):
            raise ValueError(f"sinograms have {n_angles} angles, the layer was configured for {len(self.angles_deg)}")
        self.detectors = n_detectors(self.size)
        h = filter_matrix(self.detectors, self.filter_name, self.frequency_scaling)
        if detectors != self.detectors:  # another detector count: rebin to one per pixel first (linear too)
            h = h @ rebin_matrix(detectors, self.size)
        self._h = h.astype(np.float32)
        self._index, self._lo, self._hi = backprojection_tables(self.detectors, self.size, self.angles_deg)
        self._scale = np.pi / (2 * n_angles)

    def call(self, sinogram):
        h = ops.convert_to_tensor(self._h)
        filtered = ops.einsum("ij,bja->bai", h, ops.cast(sinogram, "float32"))  # (B, A, D)
        flat = ops.reshape(filtered, (-1, len(self.angles_deg) * self.detectors))
        index = ops.convert_to_tensor(self._index)
        lo = ops.take(flat, index, axis=1) * self._lo  # (B, A, S*S)
        hi = ops.take(flat, index + 1, axis=1) * self._hi
        image = ops.sum(lo + hi, axis=1) * (self._scale * self.scale) + self.offset
        return ops.reshape(image, (-1, self.size, self.size, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, 1)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "angles_deg": self.angles_deg,
                "filter_name": self.filter_name, "frequency_scaling": self.frequency_scaling,
                "scale": self.scale, "offset": self.offset}
