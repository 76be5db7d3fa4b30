"""Optional 3D fully connected (dense) CRF on class probabilities, as in the 3D FCN-PPM paper
(papers/fcn3d_pyramid_pooling_renal_ct.txt, section II.B: "The 3D conditional random field was
adopted to improve the segmentation results, such as filling the small holes").

Implementation: ``pydensecrf2`` (import name ``pydensecrf``), the Python binding of Krähenbühl and
Koltun's fully connected CRF with Gaussian edge potentials and permutohedral-lattice mean-field
inference. Its pairwise features are arbitrary vectors, so a 3D CRF is the same model with features
(z, y, x) for the smoothness kernel and (z, y, x, HU) for the appearance kernel, which is the 3D
dense CRF of Kamnitsas et al. (DeepMedic) that 3D CT papers use. Why this one: it installs from
PyPI with a C++ compiler and works with numpy 2; SimpleCRF (which wraps DeepMedic's CRF) does not
build against numpy 2, and MONAI's ``CRF`` block needs MONAI's compiled extension, which the PyPI
wheel lacks. It is an optional dependency (``pip install kitseg[crf]``); ``dense_crf`` says so when
it is missing.

Spatial widths are given in mm and converted per axis with the spacing, so anisotropic CT is
handled. The paper does not give its CRF parameters; the defaults below are untuned starting
points (DeepMedic-like), to be chosen on validation data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kitseg.errors import KitsegError

MAX_CRF_VOXELS = 40_000_000  # ~ a 200 x 400 x 500 ROI; the lattice needs ~ 1 kB per voxel


def dense_crf(probs: np.ndarray, image: np.ndarray, spacing: Sequence[float], *, iterations: int = 5,
              smooth_sigma_mm: float = 3.0, smooth_weight: float = 3.0,
              appearance_sigma_mm: float = 10.0, appearance_sigma_hu: float = 20.0, appearance_weight: float = 5.0,
              return_probs: bool = False) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, z, y, x) on a CT ``image`` (z, y, x, in HU) with a 3D dense CRF.

    Energy: unary -log p, plus ``smooth_weight`` * Potts * exp(-|dx|^2 / 2 smooth_sigma^2) plus
    ``appearance_weight`` * Potts * exp(-|dx|^2 / 2 appearance_sigma^2 - dI^2 / 2 appearance_sigma_hu^2),
    with distances in mm. Returns uint8 labels (argmax of the mean-field marginals), or the
    marginals (C, z, y, x) float32 when ``return_probs``. Run it on the kidney ROI, not the whole scan.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian, unary_from_softmax
    except ImportError:
        raise KitsegError("the dense CRF needs the optional package pydensecrf2: pip install pydensecrf2 "
                          "(it compiles C++ code), or install kitseg[crf]") from None
    probs = np.asarray(probs, dtype=np.float32)
    image = np.asarray(image, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[1:] != image.shape or probs.shape[0] < 2:
        raise KitsegError(f"dense_crf needs probabilities (C>=2, z, y, x) over the image grid, got {probs.shape} "
                          f"for an image of shape {image.shape}")
    n_voxels = int(np.prod(image.shape))
    if n_voxels > MAX_CRF_VOXELS:
        raise KitsegError(f"dense CRF on {n_voxels} voxels would need too much memory; crop to the kidney ROI first "
                          f"(at most {MAX_CRF_VOXELS} voxels)")
    spacing = np.asarray(spacing, dtype=float)
    n_classes = probs.shape[0]
    total = probs.sum(axis=0, keepdims=True)
    probs = np.clip(probs / np.where(total > 0, total, 1), 1e-6, 1.0)

    crf = dcrf.DenseCRF(n_voxels, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    smooth = create_pairwise_gaussian(tuple(smooth_sigma_mm / spacing), image.shape)
    crf.addPairwiseEnergy(np.ascontiguousarray(smooth, dtype=np.float32), compat=float(smooth_weight))
    appearance = create_pairwise_bilateral(tuple(appearance_sigma_mm / spacing), (appearance_sigma_hu,),
                                           image[..., None], chdim=3)
    crf.addPairwiseEnergy(np.ascontiguousarray(appearance, dtype=np.float32), compat=float(appearance_weight))
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(probs.shape)
    return q if return_probs else np.argmax(q, axis=0).astype(np.uint8)
