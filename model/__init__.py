"""The IDC model: architectures, training, evaluation, calibration, bundles, inference backends."""
