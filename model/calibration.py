"""Temperature scaling and the decision threshold, both fitted on the validation patients.

Temperature scaling divides the IDC logit log(p1/p0) by one scalar T > 0 chosen to minimise the
negative log-likelihood of the validation labels; it changes confidence, not the ranking (AUC).

Threshold rule: the calibrated probability that maximises balanced accuracy on the validation
patients (equivalently Youden's J = sensitivity + specificity - 1), placed midway between the
lowest score called IDC and the next lower score, so it does not sit exactly on a patch's value.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import roc_curve

from .scoring import idc_logit, sigmoid


def prior_offset(class_weights: dict) -> float:
    """Logit shift that class weights w put into a model: log(w_idc / w_no_idc)."""
    return float(np.log(class_weights[1] / class_weights[0]))


def fit_platt(z: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(scale a, offset c) minimising the NLL of sigmoid(a (z - c)): Platt's logistic fit of IDC
    logits ``z``. Fitted on a network's own training patches it puts the networks of different runs
    (fold models, the final one) on one logit scale before anything is fitted across them."""
    z, y = np.asarray(z, np.float64), np.asarray(labels, np.float64)

    def loss(p):
        s = p[0] * z + p[1]
        grad = 1.0 / (1.0 + np.exp(-s)) - y  # d NLL / d s
        return float(np.mean(np.logaddexp(0.0, s) - y * s)), np.array([np.mean(grad * z), np.mean(grad)])

    a, b = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B").x
    return float(a), float(-b / a)


THRESHOLD_RULE = (
    "maximise balanced accuracy (Youden's J) of the calibrated IDC probability on the "
    "validation patients; midway to the next lower score"
)


def nll(prob: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of binary labels under probabilities ``prob``."""
    p = np.clip(np.asarray(prob, np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_temperature(z: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising the NLL of sigmoid(z / T), z the IDC logits."""
    y = np.asarray(labels, np.float64)

    def loss(log_t):
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # NLL of sigmoid(s), stable

    res = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def choose_threshold(prob: np.ndarray, labels: np.ndarray) -> float:
    """Decision threshold by :data:`THRESHOLD_RULE` (predict IDC when prob >= threshold)."""
    fpr, tpr, thr = roc_curve(labels, prob, drop_intermediate=False)
    # thr[0] is +inf ("call nothing"): not a threshold a bundle can store, even for a useless model
    best = 1 + int(np.argmax((tpr - fpr)[1:]))
    if best + 1 < len(thr):  # midway down to the next lower score: same predictions, a margin
        return float((thr[best] + thr[best + 1]) / 2.0)
    return float(thr[best])


def calibrate(probs: np.ndarray, labels: np.ndarray, offset: float = 0.0, context=None) -> dict:
    """Temperature and threshold for (N, 2) validation softmax outputs, with the NLL before/after.

    ``offset`` is the known prior shift of class-weighted training (see :func:`prior_offset`),
    removed from the logit before the temperature is fitted. ``context`` (logits -> logits, e.g.
    :func:`~model.scoring.mix_neighbours` over the validation grid) is applied to the logits first,
    so temperature and threshold fit the final scores.
    """
    z = idc_logit(probs)
    if context is not None:
        z = context(z)
    t = fit_temperature(z - offset, labels)
    cal = sigmoid((z - offset) / t)
    return {
        "method": "prior correction + temperature scaling",
        "temperature": t,
        "logit_offset": offset,
        "nll_before": nll(sigmoid(z), labels),
        "nll_after": nll(cal, labels),
        "threshold": choose_threshold(cal, labels),
        "threshold_rule": THRESHOLD_RULE,
    }
