"""The tiling defaults, each defined once: the geometry of the Kaggle IDC patches the models learn from."""

PATCH_SIZE = 50  # px, square
KAGGLE_MPP = 4.0  # µm/px of those patches: 2.5x
DEFAULT_TARGET_MPP = KAGGLE_MPP
DEFAULT_MIN_TISSUE = 0.05  # least tissue fraction of a scored patch
MAX_INK_FRACTION = 0.25  # most pen ink a scored patch may hold: what lies under ink cannot be scored
