"""Preprocessing fitted on training data only.

    pre = get_preprocessor("standardize")
    fitted = pre.fit(x_train)             # learns from x_train alone
    x_test = pre.transform(fitted, x_test)  # jax.numpy; jit-able
    save(fitted, workdir / "standardize.npz"); fitted = load(...); transform(fitted, x)

Registered: minmax, standardize, mean_subtract, per_example_standardize (scaling); pca, pca_whiten, zca_whiten,
truncated_svd, lda (projections); lowpass, highpass, denoise (sequence filters); outliers
(a keep-mask); discretize, vector_quantize; select_chi2, select_info_gain, select_mutual_info.
"""

# Importing the modules registers their preprocessors.
from vhjax.preprocess import cleaning, decomposition, discretize, filters, scaling, selection  # noqa: F401
from vhjax.preprocess.base import (PREPROCESSORS, Fitted, Preprocessor, from_json, get_preprocessor, load,
                                   make_preprocessor, register_preprocessor, save, to_json, transform)
from vhjax.preprocess.decomposition import principal_axes
from vhjax.preprocess.selection import information_gain

__all__ = [
    "PREPROCESSORS",
    "Fitted",
    "Preprocessor",
    "from_json",
    "get_preprocessor",
    "information_gain",
    "load",
    "make_preprocessor",
    "principal_axes",
    "register_preprocessor",
    "save",
    "to_json",
    "transform",
]
