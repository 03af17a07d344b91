"""Never finishes importing."""
while True:
    pass


def batchnorm_forward(x, gamma, beta, bn_param):
    return x, None
