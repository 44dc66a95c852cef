import math

import numpy as np
import pytest

from plankdiff.evaluation.clustering import cluster_scores, kmeans_scores


def comb2(n: int) -> int:
    return n * (n - 1) // 2


def test_hungarian_differs_from_purity_when_two_clusters_vote_for_the_same_class():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    clusters = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    # Contingency (cluster × class): cluster 0 = [3, 0], cluster 1 = [3, 2].
    # Purity: both clusters vote for class 0: (3 + 3) / 8.
    # Hungarian (one class per cluster): 0→0, 1→1 gives 3 + 2 = 5; 0→1, 1→0 gives 0 + 3 = 3: 5 / 8.
    scores = cluster_scores(labels, clusters)
    assert scores["purity"] == pytest.approx(6 / 8)
    assert scores["hungarian_accuracy"] == pytest.approx(5 / 8)
    # ARI = (Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E), E = Σ C(a_i,2)·Σ C(b_j,2) / C(n,2):
    # Σ C(n_ij,2) = 3 + 3 + 1 = 7; clusters 3, 5 → 3 + 10 = 13; classes 6, 2 → 15 + 1 = 16;
    # E = 13·16/28 = 52/7; ARI = (7 − 52/7) / (14.5 − 52/7) = −3/49.5 = −2/33 (worse than chance).
    assert comb2(3) + comb2(3) + comb2(2) == 7 and comb2(8) == 28
    assert scores["ari"] == pytest.approx(-2 / 33)
    # NMI (arithmetic mean of the entropies, natural log):
    # MI = 3/8·ln((3/8)/(3/8·6/8)) + 3/8·ln((3/8)/(5/8·6/8)) + 2/8·ln((2/8)/(5/8·2/8))
    mi = 3 / 8 * math.log(4 / 3) + 3 / 8 * math.log(4 / 5) + 2 / 8 * math.log(8 / 5)
    h_clusters = -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8))
    h_classes = -(6 / 8 * math.log(6 / 8) + 2 / 8 * math.log(2 / 8))
    assert scores["nmi"] == pytest.approx(mi / ((h_clusters + h_classes) / 2))


def test_scores_of_a_hand_made_assignment_with_an_extra_cluster():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    # cluster 7 holds the 0s, cluster 3 holds the 1s plus one 2, cluster 5 the other 2
    clusters = np.array([7, 7, 7, 3, 3, 3, 3, 5])
    scores = cluster_scores(labels, clusters)
    assert scores["purity"] == pytest.approx(7 / 8)  # majorities 3 + 3 + 1
    assert scores["hungarian_accuracy"] == pytest.approx(7 / 8)  # 7→0, 3→1, 5→2: 3 + 3 + 1
    # Σ C(n_ij,2) = 3 + 3 = 6; clusters 3, 4, 1 → 3 + 6 = 9; classes 3, 3, 2 → 3 + 3 + 1 = 7;
    # E = 9·7/28 = 9/4; ARI = (6 − 9/4) / (8 − 9/4) = 15/23.
    assert scores["ari"] == pytest.approx(15 / 23)


def test_one_cluster_per_image_is_pure_but_not_matched():
    labels = np.array([0, 0, 1, 1])
    scores = cluster_scores(labels, np.array([0, 1, 2, 3]))
    # Every singleton is pure; one-to-one matching can use only 2 of the 4 clusters.
    assert scores["purity"] == pytest.approx(1.0)
    assert scores["hungarian_accuracy"] == pytest.approx(2 / 4)
    # No pair of images shares a cluster: Σ C(n_ij,2) = 0 and E = 0·2/6 = 0, so ARI = 0 / 1.
    assert scores["ari"] == pytest.approx(0.0)
    # MI = H(classes) = ln 2 (a cluster fixes the class); H(clusters) = ln 4: NMI = ln2 / (1.5 ln2).
    assert scores["nmi"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "clusters",
    [np.array([0, 0, 1, 1, 2, 2, 2]), np.array([9, 9, 4, 4, 0, 0, 0]), np.array(list("bbaaccc"))],
)
def test_the_same_partition_under_any_names_scores_one(clusters):
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    scores = cluster_scores(labels, clusters)
    assert scores == pytest.approx({"nmi": 1.0, "ari": 1.0, "hungarian_accuracy": 1.0, "purity": 1.0})


def test_kmeans_recovers_well_separated_classes_and_not_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    labels = np.repeat(np.arange(4), 50)
    separated = centres[labels] + rng.normal(size=(200, 16))
    noise = rng.normal(size=(200, 16))
    good = kmeans_scores(separated, labels, seed=0)
    bad = kmeans_scores(noise, labels, seed=0)
    assert good["k"] == 4
    assert good["hungarian_accuracy"] > 0.95 and good["nmi"] > 0.9
    assert bad["nmi"] < 0.2


def test_pair_kmeans_scores_clusters_the_pairs_rows_of_the_store(store_and_split, tmp_path):
    from plankdiff.evaluation.clustering import pair_kmeans_scores
    from plankdiff.features.raw import raw_pixel_store

    dataset, _, split = store_and_split
    test = split.indices("test")
    store = raw_pixel_store(dataset, rows=np.sort(test), out=tmp_path / "test-rows")
    scores = pair_kmeans_scores(store, "pixels", test, split.targets[test], seed=1)
    # The same rows read by hand: positions map dataset rows to store rows, which are not the same.
    x = np.asarray(store.load("pixels")[store.positions(test)], np.float32)
    assert scores == kmeans_scores(x, split.targets[test], seed=1)
    assert scores["k"] == len(np.unique(split.targets[test]))
    assert not np.array_equal(store.positions(test), test)  # else the check above would not test the mapping
