"""Numbers reported in the literature, quoted for comparison (never produced here).

INR frequency regression, test MSE, Table 1 of Andreis et al. (SNE). The paper does not state the
unit; GUIDE section 4 argues it is most likely MSE on standardised targets, i.e. comparable to our
``normalized_mse`` rather than the raw MSE.
"""

PAPER_INR_FREQUENCY_MSE = {
    "mlp": 1.917,
    "deepsets": 2.674,
    "statnn": 0.937,
    "nfn_np": 0.911,
    "nfn_hnp": 0.998,
    "nft": 0.401,
    "dwsnet": 0.209,
    "sne": 0.098,
}
