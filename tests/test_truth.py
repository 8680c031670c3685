"""Map-against-mask agreement, on numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from idcmap.jobs.render.truth import IDC, NO_IDC, NO_PATCH, map_agreement


def test_dice_and_auc_on_a_small_map():
    mask = np.array([[IDC, IDC, NO_IDC], [NO_IDC, NO_PATCH, IDC]], np.uint8)
    prob = np.array([[0.9, 0.4, 0.6], [0.1, 0.99, np.nan]], np.float32)  # last IDC patch not scored
    a = map_agreement(prob, mask, threshold=0.5)
    # labelled: 5 patches, 3 IDC; predicted IDC: (0,0), (0,2) -> TP 1, FP 1, FN 2
    assert (a["patches"], a["idc_patches"], a["scored"]) == (5, 3, 4)
    assert a["dice"] == pytest.approx(2 * 1 / (2 + 3))
    # scores: IDC {0.9, 0.4, 0.0}, no IDC {0.6, 0.1}: IDC ranks higher in 2 + 1 + 0 of 6 pairs
    assert a["auc"] == pytest.approx(3 / 6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        map_agreement(np.zeros((2, 2)), np.zeros((3, 2), np.uint8), 0.5)
