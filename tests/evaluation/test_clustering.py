import numpy as np
import pytest

from plankdiff.evaluation.clustering import cluster_scores, kmeans_scores


def test_cluster_scores_on_a_hand_made_assignment():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    # cluster 7 holds the 0s, cluster 3 holds the 1s plus one 2, cluster 5 one 2
    clusters = np.array([7, 7, 7, 3, 3, 3, 3, 5])
    scores = cluster_scores(labels, clusters)
    assert scores["purity"] == pytest.approx(7 / 8)  # 3 + 3 + 1 majority members
    assert scores["hungarian_accuracy"] == pytest.approx(7 / 8)
    assert 0 < scores["ari"] < 1


def test_hungarian_differs_from_purity_when_two_clusters_share_a_class():
    labels = np.array([0, 0, 0, 0, 1, 1])
    clusters = np.array([0, 0, 1, 1, 1, 1])  # both clusters vote for class 0 under purity
    scores = cluster_scores(labels, clusters)
    assert scores["purity"] == pytest.approx(4 / 6)
    assert scores["hungarian_accuracy"] == pytest.approx(4 / 6)
    perfect = cluster_scores(labels, np.array([5, 5, 5, 5, 9, 9]))
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)


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
