"""torch.nn.BatchNorm's running-statistics rule, in one place (the layers, the PyTorch bridge and the
Numba backend's compiled twin all use this function)."""


def blend_running_stats(old_mean, old_var, batch_mean, batch_var, count: int, factor: float):
    """torch.nn.BatchNorm's update: new = f*batch + (1 - f)*old, in the order ATen computes it.

    batch_var is the biased variance over ``count`` values; the running
    variance takes the unbiased one, batch_var * count/(count - 1).
    Returns (new_mean, new_var) as new arrays.
    """
    unbiased = batch_var * (count / (count - 1))
    return factor * batch_mean + (1.0 - factor) * old_mean, factor * unbiased + (1.0 - factor) * old_var
