"""The course's batchnorm_forward with its three parts as arguments, for the variants that change one part.

moments(x) -> (mean, var); normalize(x, mean, var, eps) -> xhat;
update(running_mean, running_var, mean, var, momentum, x) -> (running_mean, running_var).
"""
import numpy as np


def moments(x):
    return x.mean(axis=0), x.var(axis=0)


def normalize(x, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps)


def update(running_mean, running_var, mean, var, momentum, x):
    return momentum * running_mean + (1 - momentum) * mean, momentum * running_var + (1 - momentum) * var


def batchnorm_forward_with(moments=moments, normalize=normalize, update=update):
    def batchnorm_forward(x, gamma, beta, bn_param):
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)
        D = x.shape[1]
        running_mean = bn_param.get("running_mean", np.zeros(D))
        running_var = bn_param.get("running_var", np.zeros(D))
        if mode == "train":
            mean, var = moments(x)
            out = gamma * normalize(x, mean, var, eps) + beta
            running_mean, running_var = update(running_mean, running_var, mean, var, momentum, x)
        else:
            out = gamma * normalize(x, running_mean, running_var, eps) + beta
        bn_param["running_mean"] = running_mean
        bn_param["running_var"] = running_var
        return out, None

    return batchnorm_forward
