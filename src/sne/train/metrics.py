"""Metrics shared by every encoder and benchmark."""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau


def regression_metrics(predicted: np.ndarray, true: np.ndarray, train_mean: float | None = None) -> dict:
    """MSE, MSE normalised by the variance of ``true`` (= 1 - R^2; the mean predictor scores 1),
    R^2, Kendall's tau, and the MSE of predicting ``train_mean`` for every network."""
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    mse = float(np.mean((predicted - true) ** 2))
    variance = float(np.var(true))
    tau = kendalltau(predicted, true).statistic if len(true) > 1 else float("nan")
    metrics = {
        "n": int(len(true)),
        "mse": mse,
        "normalized_mse": mse / variance if variance > 0 else float("nan"),
        "r2": 1.0 - mse / variance if variance > 0 else float("nan"),
        "kendall_tau": float(tau),
        "target_variance": variance,
    }
    if train_mean is not None:
        metrics["mean_predictor_mse"] = float(np.mean((train_mean - true) ** 2))
    return metrics


def classification_metrics(predicted: np.ndarray, true: np.ndarray) -> dict:
    predicted = np.asarray(predicted)
    true = np.asarray(true)
    return {"n": int(len(true)), "accuracy": float(np.mean(predicted == true))}
