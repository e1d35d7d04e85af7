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

#: SNE's ablations on INR frequency regression, test MSE in the unit of :data:`PAPER_INR_FREQUENCY_MSE`
#: (the paper's Table 6, GUIDE section 3), by row of :mod:`sne.bench.ablation`'s components study.
PAPER_SNE_ABLATION_MSE = {
    "full": 0.098,
    "no-invariance": 0.156,
    "no-type-encoding": 0.128,
    "no-level-encoding": 2.216,
    "no-set-functions": 1.931,
    "no-positional-hierarchy": 7.452,
}

#: SNE's test MSE on INR frequency regression by chunk size (the paper's Table 7). Its chunk size 32
#: (0.056) is not its Table 6's full SNE (0.098), also at chunk size 32: quoted as printed.
PAPER_SNE_CHUNK_SIZE_MSE = {4: 0.095, 8: 0.090, 16: 0.118, 32: 0.056}

#: Cross-dataset accuracy prediction on small-CNN zoos (GUIDE section 4): Kendall's tau averaged
#: over the four test zoos, by training zoo. The per-cell 4x4 values are not quoted here.
PAPER_CROSS_DATASET_TAU = {
    "sne": {"mnist": 0.807, "fashion-mnist": 0.765, "cifar10": 0.743, "svhn": 0.730},
    "statnn": {"mnist": 0.788, "fashion-mnist": 0.696, "cifar10": 0.743, "svhn": 0.709},
    "mlp": {"approximately": 0.60},
}

#: Cross-architecture (train on small-CNN zoos, test on Schürholt CNN-s zoos): the range of
#: Kendall's tau over the paper's train/test pairs (GUIDE section 4).
PAPER_CROSS_ARCH_TAU = {
    "sne": {"min": 0.49, "max": 0.66},
    "neural_graph": {"min": 0.35, "max": 0.57},
    "deepsets": {"min": 0.46, "max": 0.55},
}

#: Published Kendall's tau of the named transfer studies (GUIDE section 4), with where they come
#: from: the ViT transfer of the SNE paper (section 4.2; a range over its training zoos) and the CNN
#: Wild Park of the Neural Graphs paper. Studies without published numbers are absent.
PAPER_STUDY_TAU = {
    "transformer_transfer": ("the SNE paper, section 4.2, trained on small-CNN zoos, tested on its ViT zoo",
                             {"sne": {"min": 0.33, "max": 0.46}, "deepsets": {"approximately": 0.19}}),
    "wild_park": ("the Neural Graphs paper, CNN Wild Park",
                  {"ng_t": {"wild-park": 0.817}, "ng_gnn": {"wild-park": 0.804}, "statnn": {"wild-park": 0.719}}),
}


def rerun_of(name: str) -> str | None:
    """The study that study ``name`` makes again on regenerated zoos (``NAME_rerun`` remakes NAME), else None."""
    return name.removesuffix("_rerun") if name.endswith("_rerun") else None


def published_tau(benchmark: str, name: str) -> tuple[str, dict] | None:
    """(source, numbers by encoder) published for a transfer table: a named study's own (None where
    none were published; a study made again on regenerated zoos has the original's, :func:`rerun_of`),
    else the SNE paper's for the benchmark."""
    study = rerun_of(name) or name
    if study != benchmark:
        return PAPER_STUDY_TAU.get(study)
    if benchmark == "cross_dataset":
        return "the SNE paper, cross-dataset, mean over test zoos by training zoo", PAPER_CROSS_DATASET_TAU
    return "the SNE paper, small-CNN to CNN-s, range over train/test pairs", PAPER_CROSS_ARCH_TAU


def compare_ordering(ours: dict[str, float], paper: dict[str, float]) -> dict:
    """How well our per-encoder errors reproduce the paper's ranking (lower is better in both).

    Over the encoders in both: Kendall's tau between the two error lists (1 = same ranking), and
    the discordant pairs, each as ``(a, b)`` meaning the paper has ``a`` better than ``b`` and we
    have it the other way round (pairs tied on either side are neither).
    """
    from scipy.stats import kendalltau

    names = sorted(set(ours) & set(paper), key=lambda n: paper[n])
    if len(names) < 2:
        return {"encoders": names, "kendall_tau": None, "discordant": []}
    tau = kendalltau([ours[n] for n in names], [paper[n] for n in names]).statistic
    discordant = [
        (a, b) for i, a in enumerate(names) for b in names[i + 1:]
        if paper[a] < paper[b] and ours[a] > ours[b]
    ]
    return {"encoders": names, "kendall_tau": float(tau), "discordant": discordant}


#: Published INR classification test accuracy (%) on MNIST / FashionMNIST / CIFAR10 INRs (GUIDE
#: section 4, as quoted by later work), by number of INRs fitted per image. Their data is 28x28 MNIST
#: and the other sets, not our 8x8 digits: they say which ordering to expect, not which numbers.
PUBLISHED_INR_CLASSIFICATION_ACCURACY = {
    1: {"scalegmn_b": (96.6, 80.8, 38.8), "ng_gnn": (91.4, 68.0, 36.0), "dwsnet": (85.7, 67.1, 34.5),
        "nfn_np": (78.5, 68.2, 33.4)},
    10: {"nft": (98.5, 79.3, 63.4), "ng_gnn": (97.3, 86.5, 55.1)},
}
