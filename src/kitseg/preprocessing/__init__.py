"""Preprocessing: dataset fingerprint, resampling, intensity schemes, crop/paste and the case cache.

Modules (import from them directly; this package imports nothing heavy):

- ``spec``: `PreprocessSpec`, `IntensitySpec`, `RoiSpec` and the papers' `PRESETS` (pure data);
- ``records``: typed JSON records (`CropRecord`, `ResampleRecord`, `Fingerprint`, `CaseRecord`, ...);
- ``fingerprint``: `compute_fingerprint(dataset)` -> `Fingerprint`;
- ``resample``: `resample(vol, spacing|shape)` and its exact inverse `restore(pred, record)`;
- ``intensity``: `normalize(image, spec, stats)`, `median_denoise(image)`;
- ``crop``: `bbox_from_mask`, `crop`, `paste`;
- ``cache``: `preprocess_case`, `preprocess_dataset(dataset, cache_dir, spec)`, `load_case`.
"""
